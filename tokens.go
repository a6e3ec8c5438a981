package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/argon2"
)

// Token format. An API token is apiTokenPrefix followed by 64 lower-case hex
// characters (32 random bytes). The first lookupLen of those hex characters
// are stored in the clear as the record's lookup key: they narrow a presented
// token to at most one record, and the remaining 52 hex characters (208 bits)
// stay secret.
const (
	apiTokenPrefix = "nxa-api_"
	tokenHexLen    = 64
	lookupLen      = 12
)

// Argon2id parameters, fixed by the product's security model.
const (
	argonMemoryKiB = 19456
	argonTime      = 2
	argonThreads   = 1
	argonSaltLen   = 16
	argonKeyLen    = 32
)

// Scopes: admin may do everything, read every GET under /api/v1/ and
// nothing that changes state. The route table in server.go says which scope
// each route needs.
const (
	scopeAdmin = "admin"
	scopeRead  = "read"
)

const (
	defaultScope  = scopeAdmin
	bootstrapName = "bootstrap"
	maxTTL        = 10 * 366 * 24 * time.Hour
	// maxAllowFrom bounds a token's source bindings, checked on every request.
	maxAllowFrom = 32
	// lastUsedFlushInterval bounds how stale last_used_at may be on disk.
	lastUsedFlushInterval = time.Minute
)

// The patterns are compiled on first use, not at process start: most
// commands never need them.
var tokenNamePattern = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`) })

// tokenLikePattern matches anything that looks like an API token, even a
// partial one, so redactTokens can hide it.
var tokenLikePattern = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`(?i)nxa-api_[0-9a-f]{8,}`) })

// redactTokens hides API tokens in user input that an error repeats, such
// as a token command that embeds one or a token given where a name belongs.
func redactTokens(s string) string {
	return tokenLikePattern().ReplaceAllString(s, apiTokenPrefix+"<redacted>")
}

// Reasons a presented token is refused; the audit log's tally and the debug
// log show them, never the public metrics; the caller always gets the same
// 401.
var (
	errTokenMissing   = errors.New("missing")
	errTokenMalformed = errors.New("malformed")
	errTokenUnknown   = errors.New("unknown")
	errTokenMismatch  = errors.New("mismatch")
	errTokenExpired   = errors.New("expired")
	errTokenRevoked   = errors.New("revoked")
	errTokenAddress   = errors.New("address") // a real token, from outside its allow_from
)

var authFailureReasons = []error{errTokenMissing, errTokenMalformed, errTokenUnknown, errTokenMismatch, errTokenExpired, errTokenRevoked, errTokenAddress}

// Refusals of create, rotate and revoke.
var (
	errNameTaken   = errors.New("an active token with that name already exists")
	errNoSuchToken = errors.New("no active token with that name")
	errLastAdmin   = errors.New("it is the last active admin token")
	errMaxTTL      = errors.New("the token would outlive this daemon's --max-ttl")
)

// tokenRecord is one stored secret. The secret itself is never stored: only
// its Argon2id hash and its non-secret lookup key. Rotation stores a new
// record with the same name, scope, bindings and expiry, and gives the old
// one a RevokedAt at the end of its grace period: a RevokedAt in the future
// is when that secret stops working.
type tokenRecord struct {
	Name       string         `json:"name"`
	Scope      string         `json:"scope"`
	Lookup     string         `json:"lookup"`
	Hash       string         `json:"hash"`
	CreatedAt  time.Time      `json:"created_at"`
	ExpiresAt  *time.Time     `json:"expires_at,omitempty"`
	LastUsedAt *time.Time     `json:"last_used_at,omitempty"`
	RevokedAt  *time.Time     `json:"revoked_at,omitempty"`
	AllowFrom  []netip.Prefix `json:"allow_from,omitempty"` // source addresses it is accepted from; none: any
	Bootstrap  bool           `json:"bootstrap,omitempty"`  // the daemon's own token: exempt from --max-ttl

	// lastUsed is the in-memory last use (unix nanoseconds), updated on
	// every authenticated request without taking the store's lock and
	// copied into LastUsedAt when the store is written.
	lastUsed atomic.Int64
	// expiryRecorded is set once token.expired was recorded for this
	// record's first refused use since the daemon started.
	expiryRecorded atomic.Bool
}

// recordChange writes a token change to the audit log and fsyncs it. The
// store calls it under its write lock, once the change has passed every
// check and is made in memory (where no reader can see it before the lock
// is released), and before the store file is written. If it fails, the
// change is undone and the file never touched. If writing the file then
// fails, the change is undone and recordChange is called again with
// outcomeFailure, so the log never shows a change the store does not hold
// without saying it was undone.
type recordChange func(t tokenInfo, outcome string) error

// tokenInfo is what the API shows of a token: never the hash or lookup.
type tokenInfo struct {
	Name       string         `json:"name"`
	Scope      string         `json:"scope"`
	CreatedAt  time.Time      `json:"created_at"`
	ExpiresAt  *time.Time     `json:"expires_at"`
	LastUsedAt *time.Time     `json:"last_used_at"`
	AllowFrom  []netip.Prefix `json:"allow_from"`
	Bootstrap  bool           `json:"bootstrap,omitempty"`
}

type tokenFile struct {
	Version int            `json:"version"`
	Tokens  []*tokenRecord `json:"tokens"`
}

// tokenStore holds the API tokens of one daemon and verifies presented ones.
//
// Verification costs one map lookup for a token seen before (the cache is
// keyed by the SHA-256 of the token, never the token); no lookup for a
// malformed token; at most two map lookups and no Argon2 run for one whose
// lookup key matches no active record, or one presented from outside the
// record's source bindings; and one Argon2 run, bounded by argonSlots and
// argonTurn, otherwise. A token that failed its Argon2 check is not
// remembered; repeated attempts run Argon2 again, which is why the runs are
// bounded.
//
// Revocation, expiry and the end of a rotation's grace period are checked
// on the record at every verification, so they take effect on the very next
// request; a secret refused for them leaves the cache. Source bindings are
// checked on every verification too; scope is the caller's to check
// (requireScope).
// Every change is written to disk before it is acknowledged.
//
// Costs with n stored records: verify is O(1) (map lookups; one Argon2 run
// the first time a token is seen); create and rotate are one Argon2 run plus
// an O(n) rewrite of the store file; revoke and rotate scan the records and
// sweep the verification cache (at most one entry per active secret), O(n);
// list is O(n). Writes are rare and need to be durable, so one
// file rewritten whole is the plain choice; BenchmarkStoreScale shows it at
// 100 and 10,000 records.
type tokenStore struct {
	path   string
	now    func() time.Time
	maxTTL time.Duration // --max-ttl; 0: no limit. Set before serving.

	mu       sync.RWMutex
	records  []*tokenRecord          // every record ever stored, revoked ones too
	byLookup map[string]*tokenRecord // lookup key → record, revoked ones too
	byName   map[string]*tokenRecord // name → newest record of that name, the only one that can be active
	verified map[[32]byte]*tokenRecord

	argonSlots chan struct{}
	hash       func(token, salt []byte) []byte // argonKey; tests hold a run inside it
	dirty      atomic.Bool                     // last-used times not yet on disk

	queueMu sync.Mutex
	queues  map[string]*keyQueue // lookup key → requests waiting to run Argon2 for it
	queued  int                  // in all queues together

	argonRuns   atomic.Uint64
	cacheHits   atomic.Uint64
	cacheMisses atomic.Uint64
}

// readTokenFile reads a token store file without changing anything, so the
// daemon's guardrails can look at it before they allow any write. A missing
// file is an empty store.
func readTokenFile(path string) ([]*tokenRecord, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read token store: %w", err)
	}
	var f tokenFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("read token store %s: %w", path, err)
	}
	if f.Version != 1 {
		return nil, fmt.Errorf("read token store %s: unsupported version %d", path, f.Version)
	}
	seen := map[string]bool{}
	for i, r := range f.Tokens {
		if r == nil || !tokenNamePattern().MatchString(r.Name) || len(r.Lookup) != lookupLen || !isLowerHex(r.Lookup) || (r.Scope != scopeAdmin && r.Scope != scopeRead) {
			return nil, fmt.Errorf("read token store %s: record %d is damaged", path, i)
		}
		if _, _, err := parsePHC(r.Hash); err != nil {
			return nil, fmt.Errorf("read token store %s: record %q: %w", path, r.Name, err)
		}
		if seen[r.Lookup] {
			return nil, fmt.Errorf("read token store %s: record %q repeats a lookup key", path, r.Name)
		}
		seen[r.Lookup] = true
		if r.LastUsedAt != nil {
			r.lastUsed.Store(r.LastUsedAt.UnixNano())
		}
	}
	return f.Tokens, nil
}

func newTokenStore(path string, records []*tokenRecord, now func() time.Time) *tokenStore {
	s := &tokenStore{
		path:     path,
		now:      now,
		records:  records,
		byLookup: make(map[string]*tokenRecord, len(records)),
		byName:   make(map[string]*tokenRecord, len(records)),
		verified: make(map[[32]byte]*tokenRecord),
		// Simultaneous Argon2 runs: half the CPUs (at least one, at most
		// four), so a flood of tokens that need Argon2 leaves CPU for
		// everything else and holds at most 4 × 19 MiB.
		argonSlots: make(chan struct{}, max(1, min(runtime.NumCPU()/2, 4))),
		queues:     map[string]*keyQueue{},
		hash:       argonKey,
	}
	for _, r := range records { // in creation order: the newest of a name wins
		s.byLookup[r.Lookup] = r
		s.byName[r.Name] = r
	}
	return s
}

// activeCount is the number of tokens that would be accepted now.
func (s *tokenStore) activeCount() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	n := 0
	now := s.now()
	for _, r := range s.records {
		if r.active(now) {
			n++
		}
	}
	return n
}

func (r *tokenRecord) active(now time.Time) bool {
	return r.state(now) == nil
}

// allows reports whether the record accepts a request from remote (the
// connection's "ip:port"). Behind a proxy that is the proxy's address. A
// link-local IPv6 address comes with a %zone, which no prefix contains: it
// is dropped.
func (r *tokenRecord) allows(remote string) bool {
	if len(r.AllowFrom) == 0 {
		return true
	}
	ap, err := netip.ParseAddrPort(remote)
	addr := ap.Addr().Unmap().WithZone("")
	return err == nil && slices.ContainsFunc(r.AllowFrom, func(p netip.Prefix) bool { return p.Contains(addr) })
}

// endsAt is when the secret stops working, nil for never: its expiry, or
// the end of a rotation's grace period when that comes first.
func (r *tokenRecord) endsAt() *time.Time {
	if r.RevokedAt != nil && (r.ExpiresAt == nil || r.RevokedAt.Before(*r.ExpiresAt)) {
		return r.RevokedAt
	}
	return r.ExpiresAt
}

// grants reports whether the record's scope covers need.
func (r *tokenRecord) grants(need string) bool {
	return r.Scope == scopeAdmin || r.Scope == need
}

// newAPIToken returns a fresh random API token.
func newAPIToken() string {
	var b [32]byte
	rand.Read(b[:]) // never fails: since Go 1.24 crypto/rand crashes the program instead
	return fmt.Sprintf("%s%x", apiTokenPrefix, b)
}

// parseAPIToken checks a presented token's shape and returns its lookup key.
// It is cheap and runs before anything else looks at the token.
func parseAPIToken(token string) (lookup string, ok bool) {
	body, ok := strings.CutPrefix(token, apiTokenPrefix)
	if !ok || len(body) != tokenHexLen || !isLowerHex(body) {
		return "", false
	}
	return body[:lookupLen], true
}

func isLowerHex(s string) bool {
	return strings.Trim(s, "0123456789abcdef") == ""
}

// hashToken returns the Argon2id PHC string of token with a fresh salt.
func hashToken(token string) string {
	salt := make([]byte, argonSaltLen)
	rand.Read(salt) // never fails, as in newAPIToken
	enc := base64.RawStdEncoding
	return phcPrefix() + enc.EncodeToString(salt) + "$" + enc.EncodeToString(argonKey([]byte(token), salt))
}

// phcPrefix is how a PHC string names Argon2id with the parameters above;
// its salt and key follow.
func phcPrefix() string {
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$", argon2.Version, argonMemoryKiB, argonTime, argonThreads)
}

// argonKey is Argon2id with the parameters above.
func argonKey(token, salt []byte) []byte {
	return argon2.IDKey(token, salt, argonTime, argonMemoryKiB, argonThreads, argonKeyLen)
}

// parsePHC accepts only the exact parameters this product writes, so a
// tampered store cannot make verification cheaper or absurdly expensive.
func parsePHC(phc string) (salt, key []byte, err error) {
	rest, ok := strings.CutPrefix(phc, phcPrefix())
	if !ok {
		return nil, nil, errors.New("hash is not an argon2id PHC string with the expected parameters")
	}
	salt64, key64, _ := strings.Cut(rest, "$")
	enc := base64.RawStdEncoding
	salt, err1 := enc.DecodeString(salt64)
	key, err2 := enc.DecodeString(key64)
	if err1 != nil || err2 != nil || len(salt) != argonSaltLen || len(key) != argonKeyLen {
		return nil, nil, errors.New("hash has a malformed salt or key")
	}
	return salt, key, nil
}

// argonRun calls fn, an Argon2 run, in one of the argonSlots: at most
// cap(s.argonSlots) runs happen at once, verifying and hashing alike. A
// caller waits for a slot until ctx ends.
func (s *tokenStore) argonRun(ctx context.Context, fn func()) error {
	select {
	case s.argonSlots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-s.argonSlots }()
	s.argonRuns.Add(1)
	fn()
	return nil
}

// checkHash runs Argon2id on token and compares in constant time.
func (s *tokenStore) checkHash(ctx context.Context, token, phc string) (bool, error) {
	salt, want, err := parsePHC(phc)
	if err != nil {
		return false, err
	}
	var got []byte
	if err := s.argonRun(ctx, func() { got = s.hash([]byte(token), salt) }); err != nil {
		return false, err
	}
	return subtle.ConstantTimeCompare(got, want) == 1, nil
}

// Bounds on the requests that wait to run Argon2 for a first use.
const (
	argonQueuePerKey = 8  // per lookup key, the running one included
	argonQueueTotal  = 64 // on all lookup keys together
)

// errArgonBusy refuses a request at once when its lookup key's queue, or all
// queues together, are full; the caller answers 429.
var errArgonBusy = errors.New("too many requests wait for an Argon2 run")

// keyQueue is the requests waiting to run Argon2 for one lookup key.
type keyQueue struct {
	turn    chan struct{} // holds a value while one of them runs
	waiting int           // the running one included
}

// argonTurn waits until the caller may run Argon2 for lookup: one run per
// lookup key at a time, at most argonQueuePerKey requests waiting per key and
// argonQueueTotal in all. The lookup keys are in tokens.json, so a backup can
// tell an attacker one; a flood of wrong secrets for it then gets fast
// errArgonBusy refusals, holds at most one Argon2 slot, and delays another
// token's first use by at most one run per flooded key. done ends the turn.
func (s *tokenStore) argonTurn(ctx context.Context, lookup string) (done func(), err error) {
	s.queueMu.Lock()
	q := s.queues[lookup]
	if q == nil {
		q = &keyQueue{turn: make(chan struct{}, 1)}
	}
	if q.waiting >= argonQueuePerKey || s.queued >= argonQueueTotal {
		s.queueMu.Unlock()
		return nil, errArgonBusy
	}
	q.waiting++
	s.queued++
	s.queues[lookup] = q
	s.queueMu.Unlock()
	leave := func() {
		s.queueMu.Lock()
		if q.waiting--; q.waiting == 0 {
			delete(s.queues, lookup)
		}
		s.queued--
		s.queueMu.Unlock()
	}
	select {
	case q.turn <- struct{}{}:
		return func() { <-q.turn; leave() }, nil
	case <-ctx.Done():
		leave()
		return nil, ctx.Err()
	}
}

// verify returns the active record that token belongs to, if it accepts
// requests from remote (the connection's "ip:port"), or one of the errToken*
// reasons. It records the use in memory only. A revoked or expired token is
// refused with its record, found by its lookup key alone (no Argon2 run), so
// the caller can name it.
func (s *tokenStore) verify(ctx context.Context, token, remote string) (*tokenRecord, error) {
	lookup, ok := parseAPIToken(token)
	if !ok {
		return nil, errTokenMalformed
	}
	key := sha256.Sum256([]byte(token))
	now := s.now()

	s.mu.RLock()
	rec, cached := s.verified[key]
	if !cached {
		rec = s.byLookup[lookup]
	}
	var state error
	if rec != nil {
		state = rec.state(now)
	}
	s.mu.RUnlock()

	outside := state == nil && rec != nil && !rec.allows(remote)
	if cached && !outside {
		s.cacheHits.Add(1)
	} else {
		s.cacheMisses.Add(1)
	}
	switch {
	case outside:
		// Refused as an unknown token is: no Argon2 run, no cache hit and no
		// last use, so neither timing nor /metrics tells that it is real.
		return nil, errTokenAddress
	case rec == nil:
		return nil, errTokenUnknown
	case state != nil:
		// Revoked or expired: refused without an Argon2 run, and no longer
		// remembered.
		if cached {
			s.mu.Lock()
			delete(s.verified, key)
			s.mu.Unlock()
		}
		return rec, state
	case !cached:
		if found, err := s.firstUse(ctx, token, lookup, key, rec); err != nil {
			return found, err
		}
	}
	// Writes to shared memory are what cost under concurrency, so the
	// last-use time moves only when it is a second stale.
	if ns := now.UnixNano(); ns-rec.lastUsed.Load() >= int64(time.Second) {
		rec.lastUsed.Store(ns)
		if !s.dirty.Load() {
			s.dirty.Store(true)
		}
	}
	return rec, nil
}

// firstUse checks a token not in the verification cache against rec, the
// active record its lookup key found, by one Argon2 run in its lookup key's
// turn, and caches it when it matches. It returns as verify does: a refusal
// for rec's state comes with rec.
func (s *tokenStore) firstUse(ctx context.Context, token, lookup string, key [32]byte, rec *tokenRecord) (*tokenRecord, error) {
	done, err := s.argonTurn(ctx, lookup)
	if err != nil {
		return nil, err
	}
	defer done()
	match, err := s.checkHash(ctx, token, rec.Hash)
	if err != nil {
		return nil, err
	}
	if !match {
		return nil, errTokenMismatch
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// Re-check under the write lock: the record may have been revoked
	// while Argon2 ran, and revocation must win.
	if err := rec.state(s.now()); err != nil {
		return rec, err
	}
	s.verified[key] = rec
	return rec, nil
}

// check reports why rec, accepted earlier, would be refused now (nil: it
// would not), for a request that outlives its check, such as an event
// stream. The read lock lets a revocation that is being saved finish first.
func (s *tokenStore) check(rec *tokenRecord) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return rec.state(s.now())
}

func (r *tokenRecord) state(now time.Time) error {
	switch {
	case r.RevokedAt != nil && !now.Before(*r.RevokedAt):
		return errTokenRevoked
	case r.ExpiresAt != nil && !now.Before(*r.ExpiresAt):
		return errTokenExpired
	}
	return nil
}

// create mints a new token, stores its hash and returns the secret, which is
// shown to the caller once and kept nowhere. ttl 0 means no expiry; a token
// with allowFrom is accepted only from those source addresses.
func (s *tokenStore) create(ctx context.Context, name, scope string, ttl time.Duration, record recordChange, allowFrom ...netip.Prefix) (string, tokenInfo, error) {
	token := newAPIToken()
	info, err := s.add(ctx, token, &tokenRecord{Name: name, Scope: scope, AllowFrom: allowFrom}, ttl, nil, 0, record)
	return token, info, err
}

// rotate gives the active token called name a new secret with the same
// scope, bindings and expiry. Its earlier secrets stop working after grace
// (0: at once).
func (s *tokenStore) rotate(ctx context.Context, name string, grace time.Duration, record recordChange) (string, tokenInfo, error) {
	old := s.activeNamed(name)
	if old == nil {
		return "", tokenInfo{}, errNoSuchToken
	}
	if old.Bootstrap && s.maxTTL > 0 {
		// Exempt is the secret the operator gives the daemon; minted here, it
		// would be an admin secret that never expires, for any admin to take.
		return "", tokenInfo{}, fmt.Errorf("%w of %s: the bootstrap token is exempt only as the operator gives it; to replace its secret, restart the daemon with a new --api-token", errMaxTTL, s.maxTTL)
	}
	token := newAPIToken()
	rec := &tokenRecord{Name: old.Name, Scope: old.Scope, ExpiresAt: old.ExpiresAt, AllowFrom: old.AllowFrom, Bootstrap: old.Bootstrap}
	info, err := s.add(ctx, token, rec, 0, old, grace, record)
	return token, info, err
}

// add stores token as rec, whose name, scope and bindings the caller set;
// ttl > 0 sets its expiry. With old nil the name must be free. With old set
// (rotation, or a new --api-token), old must still be the active record of
// that name, and every active secret of that name stops working after grace.
func (s *tokenStore) add(ctx context.Context, token string, rec *tokenRecord, ttl time.Duration, old *tokenRecord, grace time.Duration, record recordChange) (tokenInfo, error) {
	lookup, ok := parseAPIToken(token) // checked at flag time too: the store stays closed to a bad one
	if !ok {
		return tokenInfo{}, errors.New("token is not nxa-api_ followed by 64 lower-case hex characters")
	}
	if err := validateTokenRequest(rec.Name, rec.Scope, ttl); err != nil {
		return tokenInfo{}, err
	}
	rec.Scope = cmp.Or(rec.Scope, defaultScope)
	now := s.now().UTC().Truncate(time.Second)
	rec.Lookup, rec.CreatedAt = lookup, now
	if ttl > 0 {
		exp := now.Add(ttl)
		rec.ExpiresAt = &exp
	}
	// --max-ttl refuses a token valid longer than that from now; the
	// bootstrap token, which the operator gives, is exempt.
	if s.maxTTL > 0 && !rec.Bootstrap && (rec.ExpiresAt == nil || rec.ExpiresAt.Sub(now) > s.maxTTL) {
		how := "give it a ttl_secs (--ttl)"
		if old != nil {
			how = "rotation keeps the expiry, so revoke it and create one with a ttl_secs (--ttl)"
		}
		return tokenInfo{}, fmt.Errorf("%w of %s; %s of at most %d seconds", errMaxTTL, s.maxTTL, how, int64(s.maxTTL/time.Second))
	}
	if err := s.argonRun(ctx, func() { rec.Hash = hashToken(token) }); err != nil {
		return tokenInfo{}, err
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	switch current := s.activeNamedLocked(rec.Name, s.now()); {
	case old == nil && current != nil:
		return tokenInfo{}, errNameTaken
	case old != nil && current != old: // revoked or rotated while Argon2 ran
		return tokenInfo{}, errNoSuchToken
	case s.byLookup[lookup] != nil:
		return tokenInfo{}, errors.New("token lookup key collides with a stored token; mint another")
	}
	// Every secret of the name that still works stops after grace (a free
	// name has none). Whole seconds, like every stored time: without grace
	// the old secret is refused at the time a revoke would record, not a
	// moment later.
	retired := s.retireLocked(rec.Name, s.now().UTC().Truncate(time.Second).Add(grace))
	previous := s.byName[rec.Name]
	s.records = append(s.records, rec)
	s.byLookup[lookup] = rec
	s.byName[rec.Name] = rec
	err := s.commitLocked(rec.info(), record, func() {
		retired()
		s.records = s.records[:len(s.records)-1]
		delete(s.byLookup, lookup)
		s.byName[rec.Name] = previous
	})
	if err != nil {
		return tokenInfo{}, err
	}
	return rec.info(), nil
}

// checkName checks a token's or a context's name. A name is shown
// everywhere, so one that looks like a token (a paste cut short) is refused.
func checkName(kind, name string) error {
	if tokenLikePattern().MatchString(name) {
		return fmt.Errorf("%s name looks like an API token, and a name is shown everywhere: give the secret where a token belongs", kind)
	}
	if !tokenNamePattern().MatchString(name) {
		return fmt.Errorf("%s name %q is invalid: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit", kind, name)
	}
	return nil
}

func validateTokenRequest(name, scope string, ttl time.Duration) error {
	if err := checkName("token", name); err != nil {
		return err
	}
	if scope != "" && scope != scopeAdmin && scope != scopeRead {
		return fmt.Errorf("scope %q is not valid: use %s or %s", scope, scopeAdmin, scopeRead)
	}
	if ttl < 0 || ttl > maxTTL {
		return fmt.Errorf("ttl_secs (--ttl) must be between 0 (no expiry) and %d seconds", int64(maxTTL/time.Second))
	}
	return nil
}

// parseAllowFrom reads a token's source bindings. An address without a
// prefix length is refused rather than guessed at.
func parseAllowFrom(cidrs []string) ([]netip.Prefix, error) {
	if len(cidrs) > maxAllowFrom {
		return nil, fmt.Errorf("allow_from (--allow-from) holds %d CIDRs; at most %d are allowed", len(cidrs), maxAllowFrom)
	}
	var out []netip.Prefix
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil || p.Addr().Is4In6() {
			return nil, fmt.Errorf("allow_from (--allow-from) %q is not a CIDR such as 10.0.0.0/8, 192.0.2.7/32 or ::1/128", redactTokens(c))
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// activeNamed returns the active record called name, or nil.
func (s *tokenStore) activeNamed(name string) *tokenRecord {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.activeNamedLocked(name, s.now())
}

func (s *tokenStore) activeNamedLocked(name string, now time.Time) *tokenRecord {
	if r := s.byName[name]; r != nil && r.active(now) {
		return r
	}
	return nil
}

// revoke makes every secret of the active token called name stop working.
// It refuses to revoke the last active admin token, so that nobody locks
// every admin out by accident. It is on disk, and the token refused, before
// revoke returns.
func (s *tokenStore) revoke(name string, record recordChange) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now().UTC().Truncate(time.Second)
	rec := s.activeNamedLocked(name, now)
	if rec == nil {
		return errNoSuchToken
	}
	if rec.Scope == scopeAdmin && !slices.ContainsFunc(s.records, func(r *tokenRecord) bool {
		return r.Name != name && r.Scope == scopeAdmin && r.active(now)
	}) {
		return errLastAdmin
	}
	return s.commitLocked(rec.info(), record, s.retireLocked(name, now))
}

// retireLocked makes the secrets of name that still work at `at` stop
// working then, and returns a function that undoes it.
func (s *tokenStore) retireLocked(name string, at time.Time) (undo func()) {
	before := map[*tokenRecord]*time.Time{}
	for _, r := range s.records {
		if r.Name == name && r.active(at) {
			before[r] = r.RevokedAt
			r.RevokedAt = &at
		}
	}
	return func() {
		for r, t := range before {
			r.RevokedAt = t
		}
	}
}

// commitLocked records the change made in memory (which no reader sees
// while the caller holds s.mu) and then writes the store; when either
// fails it calls undo, so that a change which is not both recorded and on
// disk never takes effect. Secrets that no longer work leave the
// verification cache.
func (s *tokenStore) commitLocked(info tokenInfo, record recordChange, undo func()) error {
	if err := record(info, outcomeSuccess); err != nil {
		undo()
		return err
	}
	if err := s.saveLocked(); err != nil {
		undo()
		record(info, outcomeFailure)
		return err
	}
	now := s.now()
	maps.DeleteFunc(s.verified, func(_ [32]byte, r *tokenRecord) bool { return !r.active(now) })
	return nil
}

// findToken reports the stored record a token belongs to, active or not, by
// one Argon2 run. The daemon uses it at start for --api-token.
func (s *tokenStore) findToken(ctx context.Context, token string) (*tokenRecord, error) {
	lookup, ok := parseAPIToken(token)
	if !ok {
		return nil, errTokenMalformed
	}
	s.mu.RLock()
	rec := s.byLookup[lookup]
	s.mu.RUnlock()
	if rec == nil {
		return nil, nil
	}
	match, err := s.checkHash(ctx, token, rec.Hash)
	if err != nil {
		return nil, err
	}
	if !match {
		return nil, errors.New("the given API token shares its lookup key with a different stored token; choose another token")
	}
	return rec, nil
}

// list returns the active tokens in creation order, each once: a secret
// that still works for a rotation's grace period is not listed.
func (s *tokenStore) list() []tokenInfo {
	s.mu.RLock()
	defer s.mu.RUnlock()
	now := s.now()
	out := []tokenInfo{}
	for _, r := range s.records {
		if r.active(now) && s.byName[r.Name] == r {
			out = append(out, r.info())
		}
	}
	return out
}

// info shows a secret in its rotation's grace period expiring when the
// grace ends.
func (r *tokenRecord) info() tokenInfo {
	info := tokenInfo{Name: r.Name, Scope: r.Scope, CreatedAt: r.CreatedAt, ExpiresAt: r.endsAt(), AllowFrom: r.AllowFrom, Bootstrap: r.Bootstrap}
	if ns := r.lastUsed.Load(); ns != 0 {
		t := time.Unix(0, ns).UTC().Truncate(time.Second)
		info.LastUsedAt = &t
	}
	return info
}

// flushLastUsed writes last-used times to disk if any changed since the last
// write. It never runs on the request path.
func (s *tokenStore) flushLastUsed() error {
	if !s.dirty.Load() {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.saveLocked()
}

// saveLocked writes every record to disk. The caller holds s.mu.
func (s *tokenStore) saveLocked() error {
	s.dirty.Store(false)
	for _, r := range s.records {
		r.LastUsedAt = r.info().LastUsedAt
	}
	data, err := json.MarshalIndent(tokenFile{Version: 1, Tokens: s.records}, "", "  ")
	if err != nil {
		return fmt.Errorf("encode token store: %w", err)
	}
	if err := writeFileAtomic(s.path, append(data, '\n')); err != nil {
		s.dirty.Store(true)
		return fmt.Errorf("write token store: %w", err)
	}
	return nil
}
