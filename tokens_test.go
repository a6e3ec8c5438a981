package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock is the only fake in the tests: time moves when the test says.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newTestStore(t testing.TB) (*tokenStore, *fakeClock) {
	t.Helper()
	clock := &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	return newTokenStore(filepath.Join(t.TempDir(), tokenStoreFile), nil, clock.now), clock
}

// storeWithAlice is a test store holding two admins, keeper and alice (so
// that alice is not the last admin), and alice's secret.
func storeWithAlice(t testing.TB) (*tokenStore, string) {
	t.Helper()
	s, _ := newTestStore(t)
	_, _, err := s.create(context.Background(), "keeper", "", 0, noAudit)
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := s.create(context.Background(), "alice", "", 0, noAudit)
	if err != nil {
		t.Fatal(err)
	}
	return s, tok
}

func TestTokenFormat(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		tok := newAPIToken()
		if _, ok := parseAPIToken(tok); !ok || len(tok) != 72 || !strings.HasPrefix(tok, "nxa-api_") || seen[tok] {
			t.Fatalf("bad or repeated token %q", tok)
		}
		seen[tok] = true
	}
	cases := []struct {
		token string
		ok    bool
	}{
		{"nxa-api_" + strings.Repeat("0a", 32), true},
		{"nxa-api_" + strings.Repeat("0A", 32), false},
		{"nxa_" + strings.Repeat("0a", 32), false},
		{"nxa-api_" + strings.Repeat("0a", 31), false},
		{"nxa-api_" + strings.Repeat("0a", 32) + "0", false},
		{"nxa-api_" + strings.Repeat("g", 64), false},
		{"", false},
		{"nxa-api_", false},
	}
	for _, c := range cases {
		if _, ok := parseAPIToken(c.token); ok != c.ok {
			t.Errorf("parseAPIToken(%q) = %v, want %v", c.token, ok, c.ok)
		}
	}
}

func TestHashIsArgon2idPHC(t *testing.T) {
	h := hashToken(newAPIToken())
	if !strings.HasPrefix(h, "$argon2id$v=19$m=19456,t=2,p=1$") {
		t.Errorf("hash %q", h)
	}
	salt, key, err := parsePHC(h)
	if err != nil || len(salt) != 16 || len(key) != 32 {
		t.Errorf("parsePHC: %v salt %d key %d", err, len(salt), len(key))
	}
	for _, bad := range []string{
		strings.Replace(h, "m=19456", "m=8", 1),
		strings.Replace(h, "argon2id", "argon2i", 1),
		strings.Replace(h, "t=2", "t=1", 1),
		h[:len(h)-4],
		"",
		"$$$$$",
	} {
		if _, _, err := parsePHC(bad); err == nil {
			t.Errorf("parsePHC accepted %q", bad)
		}
	}
}

func TestVerifyAndCache(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := context.Background()
	tok, _, err := s.create(ctx, "alice", "", 0, noAudit)
	if err != nil {
		t.Fatal(err)
	}
	runs := s.argonRuns.Load() // the create itself is not counted as a verification run
	rec, err := s.verify(ctx, tok, "")
	if err != nil || rec.Name != "alice" || rec.Scope != "admin" {
		t.Fatalf("verify: %v %+v", err, rec)
	}
	if s.argonRuns.Load() != runs+1 {
		t.Errorf("first verification ran Argon2 %d times", s.argonRuns.Load()-runs)
	}
	for range 10 {
		if _, err := s.verify(ctx, tok, ""); err != nil {
			t.Fatal(err)
		}
	}
	if s.argonRuns.Load() != runs+1 || s.cacheHits.Load() != 10 {
		t.Errorf("remembered token: %d Argon2 runs, %d hits", s.argonRuns.Load()-runs, s.cacheHits.Load())
	}
	if rec.info().LastUsedAt == nil {
		t.Error("last use not recorded")
	}
}

// TestCheapRefusals: malformed tokens and unknown lookup keys never reach
// Argon2; only a token that matches a record's lookup key does.
func TestCheapRefusals(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := context.Background()
	tok, _, _ := s.create(ctx, "alice", "", 0, noAudit)
	runs := s.argonRuns.Load()
	cases := []struct {
		name, token string
		want        error
	}{
		{"empty", "", errTokenMalformed},
		{"garbage", "hello", errTokenMalformed},
		{"upper case", strings.ToUpper(tok), errTokenMalformed},
		{"join token", "nxa_" + tok[8:], errTokenMalformed},
		{"unknown lookup", "nxa-api_" + strings.Repeat("f", 64), errTokenUnknown},
	}
	for _, c := range cases {
		if _, err := s.verify(ctx, c.token, ""); !errors.Is(err, c.want) {
			t.Errorf("%s: err = %v, want %v", c.name, err, c.want)
		}
	}
	if s.argonRuns.Load() != runs {
		t.Errorf("cheap refusals ran Argon2 %d times", s.argonRuns.Load()-runs)
	}
	wrong := tok[:8+lookupLen] + strings.Repeat("0", 64-lookupLen)
	if _, err := s.verify(ctx, wrong, ""); !errors.Is(err, errTokenMismatch) {
		t.Errorf("right lookup, wrong secret: %v", err)
	}
	if s.argonRuns.Load() != runs+1 {
		t.Errorf("a known lookup key should cost exactly one Argon2 run, got %d", s.argonRuns.Load()-runs)
	}
}

func TestRevokeTakesEffectAtOnce(t *testing.T) {
	s, tok := storeWithAlice(t)
	ctx := context.Background()
	if _, err := s.verify(ctx, tok, ""); err != nil {
		t.Fatal(err)
	}
	if err := s.revoke("alice", noAudit); err != nil {
		t.Fatal(err)
	}
	if _, err := s.verify(ctx, tok, ""); !errors.Is(err, errTokenRevoked) {
		t.Errorf("remembered token after revoke: %v", err)
	}
	if err := s.revoke("alice", noAudit); !errors.Is(err, errNoSuchToken) {
		t.Errorf("second revoke: %v", err)
	}
	// The revocation is on disk before revoke returned.
	records, err := readTokenFile(s.path)
	if err != nil || len(records) != 2 || records[1].RevokedAt == nil {
		t.Errorf("stored records after revoke: %v %+v", err, records)
	}
}

func TestExpiry(t *testing.T) {
	s, clock := newTestStore(t)
	ctx := context.Background()
	tok, info, err := s.create(ctx, "ci", "", time.Hour, noAudit)
	if err != nil {
		t.Fatal(err)
	}
	if info.ExpiresAt == nil || !info.ExpiresAt.Equal(clock.now().Add(time.Hour)) {
		t.Errorf("expires_at = %v", info.ExpiresAt)
	}
	if _, err := s.verify(ctx, tok, ""); err != nil {
		t.Fatal(err)
	}
	clock.advance(time.Hour - time.Second)
	if _, err := s.verify(ctx, tok, ""); err != nil {
		t.Errorf("a second before expiry: %v", err)
	}
	clock.advance(time.Second)
	if _, err := s.verify(ctx, tok, ""); !errors.Is(err, errTokenExpired) {
		t.Errorf("at expiry: %v", err)
	}
	if len(s.list()) != 0 || s.activeCount() != 0 {
		t.Error("an expired token is still listed as active")
	}
	if _, _, err := s.create(ctx, "ci", "", 0, noAudit); err != nil {
		t.Errorf("the name of an expired token is free again: %v", err)
	}
}

func TestCreateValidation(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := context.Background()
	cases := []struct {
		name, scope string
		ttl         time.Duration
		ok          bool
	}{
		{"alice", "", 0, true},
		{"a.b_c-9", "admin", time.Second, true},
		{"read-only", "read", 0, true},
		{"capital", "Admin", 0, false},
		{"", "", 0, false},
		{"-lead", "", 0, false},
		{"has space", "", 0, false},
		{strings.Repeat("x", 65), "", 0, false},
		{"ok", "bad scope", 0, false},
		{"neg", "", -time.Second, false},
		{"long", "", maxTTL + time.Second, false},
	}
	for _, c := range cases {
		_, _, err := s.create(ctx, c.name, c.scope, c.ttl, noAudit)
		if (err == nil) != c.ok {
			t.Errorf("create(%q, %q, %v) err = %v, want ok=%v", c.name, c.scope, c.ttl, err, c.ok)
		}
	}
	if _, _, err := s.create(ctx, "alice", "", 0, noAudit); !errors.Is(err, errNameTaken) {
		t.Errorf("duplicate name: %v", err)
	}
}

// TestStoreWriteFailureChangesNothing: a change that cannot be written is
// not acknowledged and not kept in memory.
func TestStoreWriteFailureChangesNothing(t *testing.T) {
	s, tok := storeWithAlice(t)
	ctx := context.Background()
	s.path = filepath.Join(s.path, "not-a-dir", tokenStoreFile) // parent is a file: every write fails
	var recorded []string
	record := func(t tokenInfo, outcome string) error { recorded = append(recorded, t.Name+" "+outcome); return nil }
	if _, _, err := s.create(ctx, "bob", "", 0, record); err == nil {
		t.Fatal("create succeeded although the store could not be written")
	}
	if len(s.list()) != 2 {
		t.Errorf("the failed create left a record in memory: %+v", s.list())
	}
	if err := s.revoke("alice", record); err == nil {
		t.Fatal("revoke succeeded although the store could not be written")
	}
	if _, err := s.verify(ctx, tok, ""); err != nil {
		t.Errorf("a revoke that was not written took effect: %v", err)
	}
	// Each change was recorded before it was tried, and its undoing after.
	if want := []string{"bob success", "bob failure", "alice success", "alice failure"}; !slices.Equal(recorded, want) {
		t.Errorf("recorded %q, want %q", recorded, want)
	}
}

// TestStoreRecordsBeforeChanging: a change whose record cannot be written
// is not made, in memory or on disk.
func TestStoreRecordsBeforeChanging(t *testing.T) {
	s, tok := storeWithAlice(t)
	ctx := context.Background()
	before := mustReadFile(t, s.path)
	refuse := func(tokenInfo, string) error { return errAuditUnavailable }
	if _, _, err := s.create(ctx, "bob", "", 0, refuse); !errors.Is(err, errAuditUnavailable) {
		t.Errorf("create with no audit: %v", err)
	}
	if err := s.revoke("alice", refuse); !errors.Is(err, errAuditUnavailable) {
		t.Errorf("revoke with no audit: %v", err)
	}
	if _, _, err := s.rotate(ctx, "alice", 0, refuse); !errors.Is(err, errAuditUnavailable) {
		t.Errorf("rotate with no audit: %v", err)
	}
	if _, err := s.verify(ctx, tok, ""); err != nil || len(s.list()) != 2 {
		t.Errorf("an unrecorded change took effect: %v %+v", err, s.list())
	}
	if after, _ := os.ReadFile(s.path); !bytes.Equal(before, after) {
		t.Error("an unrecorded change reached the store file")
	}
}

func TestReadTokenFileRejectsDamage(t *testing.T) {
	dir := t.TempDir()
	good := `{"version":1,"tokens":[{"name":"a","scope":"admin","lookup":"0123456789ab","hash":"` + hashToken(newAPIToken()) + `","created_at":"2026-01-01T00:00:00Z"}]}`
	cases := map[string]string{
		"not json":        "{",
		"wrong version":   `{"version":2,"tokens":[]}`,
		"unknown field":   `{"version":1,"tokens":[],"extra":1}`,
		"bad lookup":      strings.Replace(good, "0123456789ab", "XYZ", 1),
		"bad hash":        strings.Replace(good, "argon2id", "md5", 1),
		"bad name":        strings.Replace(good, `"name":"a"`, `"name":"a b"`, 1),
		"null record":     `{"version":1,"tokens":[null]}`,
		"repeated lookup": strings.Replace(good, "}]}", "},"+good[strings.Index(good, "[")+1:len(good)-2]+"]}", 1),
	}
	for name, content := range cases {
		path := filepath.Join(dir, name+".json")
		os.WriteFile(path, []byte(content), 0o600)
		if _, err := readTokenFile(path); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	path := filepath.Join(dir, "good.json")
	os.WriteFile(path, []byte(good), 0o600)
	if recs, err := readTokenFile(path); err != nil || len(recs) != 1 {
		t.Errorf("good file: %v", err)
	}
	if recs, err := readTokenFile(filepath.Join(dir, "missing.json")); err != nil || recs != nil {
		t.Errorf("missing file: %v %v", recs, err)
	}
}

// TestArgonRunsBounded: with every Argon2 slot taken, a token that needs
// Argon2 waits (until its request ends) while cheap refusals still answer.
func TestArgonRunsBounded(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := context.Background()
	tok, _, _ := s.create(ctx, "alice", "", 0, noAudit)
	wrong := tok[:8+lookupLen] + strings.Repeat("0", 64-lookupLen)
	if c := cap(s.argonSlots); c < 1 || c > 4 {
		t.Fatalf("Argon2 bound is %d", c)
	}
	for range cap(s.argonSlots) {
		s.argonSlots <- struct{}{}
	}
	runs := s.argonRuns.Load()
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := s.verify(short, wrong, ""); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("with every slot taken: err = %v, want the request's deadline", err)
	}
	if _, err := s.verify(ctx, "nxa-api_"+strings.Repeat("e", 64), ""); !errors.Is(err, errTokenUnknown) {
		t.Errorf("unknown token while slots are full: %v", err)
	}
	if s.argonRuns.Load() != runs {
		t.Error("Argon2 ran without a slot")
	}
	for range cap(s.argonSlots) {
		<-s.argonSlots
	}
	if _, err := s.verify(ctx, tok, ""); err != nil {
		t.Errorf("after the slots were freed: %v", err)
	}
}

// TestArgonQueuePerKey: wrong secrets for one known lookup key run Argon2
// one at a time and what does not fit the key's queue is refused at once,
// while another token's first use waits in its own queue; all queues
// together are bounded too.
func TestArgonQueuePerKey(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := context.Background()
	var tokens []string
	for i := range argonQueueTotal/argonQueuePerKey + 1 {
		tok, _, err := s.create(ctx, fmt.Sprint("t", i), "", 0, noAudit)
		if err != nil {
			t.Fatal(err)
		}
		tokens = append(tokens, tok)
	}
	wrong := func(tok string) string { return tok[:8+lookupLen] + strings.Repeat("0", 64-lookupLen) }
	// Room for many runs, so only the per-key turn can keep them to one;
	// the test holds every slot until it lets the runs go.
	s.argonSlots = make(chan struct{}, 8)
	block := func() {
		for range cap(s.argonSlots) {
			s.argonSlots <- struct{}{}
		}
	}
	release := func() {
		for range cap(s.argonSlots) {
			<-s.argonSlots
		}
	}
	results := make(chan error, 100)
	flood := func(ctx context.Context, tok string, n int) {
		for range n {
			go func() { _, err := s.verify(ctx, wrong(tok), ""); results <- err }()
		}
	}
	expect := func(n int, want error) {
		t.Helper()
		for range n {
			select {
			case err := <-results:
				if !errors.Is(err, want) {
					t.Fatalf("got %v, want %v", err, want)
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("no answer within 30s, want %v", want)
			}
		}
	}

	block()
	flood(ctx, tokens[0], 50)
	expect(50-argonQueuePerKey, errArgonBusy) // at once, while nothing runs
	first := make(chan error, 1)
	go func() { _, err := s.verify(ctx, tokens[1], ""); first <- err }()
	most, done := 0, make(chan struct{})
	go func() {
		defer close(done)
		for len(results) < argonQueuePerKey || len(first) == 0 {
			most = max(most, len(s.argonSlots)) // runs going on
			runtime.Gosched()
		}
	}()
	release()
	<-done
	expect(argonQueuePerKey, errTokenMismatch)
	if err := <-first; err != nil {
		t.Errorf("first use of another token while one key's queue was full: %v", err)
	}
	if most > 2 {
		t.Errorf("%d Argon2 runs at once for 2 lookup keys; want at most one per key", most)
	}

	block()
	waiting, cancel := context.WithCancel(ctx)
	for _, tok := range tokens[:len(tokens)-1] {
		flood(waiting, tok, argonQueuePerKey)
	}
	for s.queueMu.Lock(); s.queued < argonQueueTotal; s.queueMu.Lock() {
		s.queueMu.Unlock() // the goroutines are still joining their queues
		time.Sleep(time.Millisecond)
	}
	s.queueMu.Unlock()
	if _, err := s.verify(ctx, tokens[len(tokens)-1], ""); !errors.Is(err, errArgonBusy) {
		t.Errorf("with all queues together full: %v, want errArgonBusy", err)
	}
	cancel() // they leave their queues without an Argon2 run
	expect(argonQueueTotal, context.Canceled)
	release()
	if len(s.queues) != 0 || s.queued != 0 {
		t.Errorf("queues left behind: %d keys, %d requests", len(s.queues), s.queued)
	}
}

// TestExpiryDuringFirstCheck: a token that expires while its first Argon2
// run waits is refused as expired together with its record, as any expired
// token is (requireScope records token.expired from it; a nil record there
// was a 500).
func TestExpiryDuringFirstCheck(t *testing.T) {
	s, clock := newTestStore(t)
	ctx := context.Background()
	tok, _, _ := s.create(ctx, "brief", "", time.Minute, noAudit)
	for range cap(s.argonSlots) {
		s.argonSlots <- struct{}{} // the check waits, past the state check
	}
	var rec *tokenRecord
	var err error
	done := make(chan struct{})
	go func() { rec, err = s.verify(ctx, tok, ""); close(done) }()
	for s.queueMu.Lock(); s.queued == 0; s.queueMu.Lock() {
		s.queueMu.Unlock()
		time.Sleep(time.Millisecond)
	}
	s.queueMu.Unlock()
	clock.advance(2 * time.Minute)
	for range cap(s.argonSlots) {
		<-s.argonSlots
	}
	<-done
	if !errors.Is(err, errTokenExpired) || rec == nil || rec.Name != "brief" {
		t.Errorf("expired during its first check: %v, %v; want errTokenExpired with the record", rec, err)
	}
}

func BenchmarkVerifyRemembered(b *testing.B) {
	s, _ := newTestStore(b)
	ctx := context.Background()
	tok, _, _ := s.create(ctx, "alice", "", 0, noAudit)
	s.verify(ctx, tok, "")
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := s.verify(ctx, tok, ""); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerifyFirst(b *testing.B) {
	s, _ := newTestStore(b)
	ctx := context.Background()
	tok, _, _ := s.create(ctx, "alice", "", 0, noAudit)
	b.ReportAllocs()
	for b.Loop() {
		s.mu.Lock()
		clear(s.verified)
		s.mu.Unlock()
		if _, err := s.verify(ctx, tok, ""); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerifyUnknown(b *testing.B) {
	s, _ := newTestStore(b)
	ctx := context.Background()
	s.create(ctx, "alice", "", 0, noAudit)
	random := newAPIToken()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.verify(ctx, random, ""); err == nil {
			b.Fatal("random token accepted")
		}
	}
}

// FuzzReadTokenFile: the token store decoder never panics, and what it
// accepts it writes back and reads again as the same records.
func FuzzReadTokenFile(f *testing.F) {
	hash := hashToken("nxa-api_" + strings.Repeat("ab", 32))
	f.Add(`{"version":1,"tokens":[]}`)
	f.Add(`{"version":1,"tokens":[{"name":"a","scope":"admin","lookup":"0123456789ab","hash":"` + hash + `","created_at":"2026-01-01T00:00:00Z","revoked_at":"2026-01-02T00:00:00Z"}]}`)
	f.Add(`{"version":1,"tokens":[null]}`)
	f.Add(`{`)
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, content string) {
		path := filepath.Join(dir, "fuzz.json")
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		records, err := readTokenFile(path)
		if err != nil {
			return
		}
		s := newTokenStore(path, records, time.Now)
		s.mu.Lock()
		err = s.saveLocked()
		s.mu.Unlock()
		if err != nil {
			t.Fatalf("accepted records could not be written back: %v", err)
		}
		again, err := readTokenFile(path)
		if err != nil || len(again) != len(records) {
			t.Fatalf("written store does not read back: %v", err)
		}
		for i := range records {
			if again[i].Name != records[i].Name || again[i].Hash != records[i].Hash || again[i].Lookup != records[i].Lookup ||
				(again[i].RevokedAt == nil) != (records[i].RevokedAt == nil) {
				t.Fatalf("record %d changed on the way back", i)
			}
		}
	})
}

// FuzzVerify: any presented string is refused or accepted without a panic,
// and only a string of the token format can ever be accepted.
func FuzzVerify(f *testing.F) {
	s, _ := newTestStore(f)
	tok, _, _ := s.create(context.Background(), "alice", "", 0, noAudit)
	f.Add(tok)
	f.Add("")
	f.Add(tok[:20])
	f.Add("nxa_" + tok[8:])
	f.Fuzz(func(t *testing.T, presented string) {
		rec, err := s.verify(context.Background(), presented, "")
		if err == nil && (presented != tok || rec.Name != "alice") {
			t.Fatalf("accepted %q", presented)
		}
	})
}

// scaledStore returns a store holding n active records plus one real token
// ("probe") whose secret it returns. The n records share one precomputed
// hash: building 10,000 of them with an Argon2 run each would take minutes
// and measure nothing the benchmark is about.
func scaledStore(b *testing.B, n int) (*tokenStore, string) {
	b.Helper()
	clock := &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	hash := hashToken(newAPIToken())
	records := make([]*tokenRecord, n)
	for i := range records {
		records[i] = &tokenRecord{Name: fmt.Sprintf("t%d", i), Scope: defaultScope, Lookup: fmt.Sprintf("%012x", i), Hash: hash, CreatedAt: clock.t}
	}
	s := newTokenStore(filepath.Join(b.TempDir(), tokenStoreFile), records, clock.now)
	probe, _, err := s.create(context.Background(), "probe", "", 0, noAudit)
	if err != nil {
		b.Fatal(err)
	}
	return s, probe
}

// BenchmarkStoreScale shows the costs the tokenStore comment promises, at
// 100 and 10,000 stored tokens: verify O(1), save (the durable part of create
// and revoke) O(n), create one Argon2 run plus that save, list O(n).
func BenchmarkStoreScale(b *testing.B) {
	ctx := context.Background()
	for _, n := range []int{100, 10_000} {
		b.Run(fmt.Sprintf("verify/n=%d", n), func(b *testing.B) {
			s, probe := scaledStore(b, n)
			s.verify(ctx, probe, "")
			for b.Loop() {
				if _, err := s.verify(ctx, probe, ""); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("verify-unknown/n=%d", n), func(b *testing.B) {
			s, _ := scaledStore(b, n)
			random := newAPIToken()
			for b.Loop() {
				if _, err := s.verify(ctx, random, ""); err == nil {
					b.Fatal("random token accepted")
				}
			}
		})
		b.Run(fmt.Sprintf("save/n=%d", n), func(b *testing.B) {
			s, _ := scaledStore(b, n)
			for b.Loop() {
				s.mu.Lock()
				err := s.saveLocked()
				s.mu.Unlock()
				if err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("create/n=%d", n), func(b *testing.B) {
			s, _ := scaledStore(b, n)
			i := 0
			for b.Loop() {
				if _, _, err := s.create(ctx, fmt.Sprintf("new%d", i), "", 0, noAudit); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
		b.Run(fmt.Sprintf("list/n=%d", n), func(b *testing.B) {
			s, _ := scaledStore(b, n)
			for b.Loop() {
				if got := s.list(); len(got) != n+1 {
					b.Fatalf("listed %d tokens, want %d", len(got), n+1)
				}
			}
		})
	}
}

// TestRotate: a new secret for the same name, scope, bindings and expiry;
// the old one refused at once, or from the end of the grace period (an
// earlier grace ends with a later rotation); stored, so a restart keeps the
// grace deadline; a retired secret leaves the cache.
func TestRotate(t *testing.T) {
	s, clock := newTestStore(t)
	ctx := context.Background()
	local, from := netip.MustParsePrefix("127.0.0.0/8"), "127.0.0.1:5000"
	first, before, _ := s.create(ctx, "ci", scopeRead, 48*time.Hour, noAudit, local)
	s.verify(ctx, first, from)
	clock.advance(time.Hour)
	second, after, err := s.rotate(ctx, "ci", 0, noAudit)
	if err != nil {
		t.Fatal(err)
	}
	if after.Name != "ci" || after.Scope != scopeRead || !after.ExpiresAt.Equal(*before.ExpiresAt) || !slices.Equal(after.AllowFrom, []netip.Prefix{local}) || second == first {
		t.Errorf("rotated %+v from %+v", after, before)
	}
	if _, cached := s.verified[sha256.Sum256([]byte(first))]; cached {
		t.Error("the rotated secret is still in the verification cache")
	}
	if _, err := s.verify(ctx, first, from); !errors.Is(err, errTokenRevoked) {
		t.Errorf("old secret after rotation without grace: %v", err)
	}
	if _, err := s.verify(ctx, second, from); err != nil {
		t.Errorf("new secret: %v", err)
	}
	if _, err := s.verify(ctx, second, "192.0.2.1:5000"); !errors.Is(err, errTokenAddress) {
		t.Errorf("new secret from outside its bindings: %v", err)
	}

	third, _, _ := s.rotate(ctx, "ci", time.Hour, noAudit)
	s.verify(ctx, third, from)
	clock.advance(time.Hour - time.Nanosecond)
	if _, err := s.verify(ctx, second, from); err != nil {
		t.Errorf("old secret within its grace: %v", err)
	}
	if got := s.list(); len(got) != 1 || got[0].Name != "ci" {
		t.Errorf("list during a grace period = %+v, want ci once", got)
	}
	reopened := newTokenStore(s.path, mustRead(t, s.path), clock.now)
	if _, err := reopened.verify(ctx, second, from); err != nil {
		t.Errorf("old secret within its grace after a restart: %v", err)
	}
	clock.advance(time.Nanosecond)
	for _, st := range []*tokenStore{s, reopened} {
		if _, err := st.verify(ctx, second, from); !errors.Is(err, errTokenRevoked) {
			t.Errorf("old secret at the end of its grace: %v", err)
		}
		if _, cached := st.verified[sha256.Sum256([]byte(second))]; cached {
			t.Error("a secret past its grace is still in the verification cache")
		}
	}

	fourth, _, _ := s.rotate(ctx, "ci", time.Hour, noAudit)
	fifth, _, _ := s.rotate(ctx, "ci", 0, noAudit)
	for _, old := range []string{third, fourth} {
		if _, err := s.verify(ctx, old, from); !errors.Is(err, errTokenRevoked) {
			t.Errorf("a rotation without grace left an earlier secret working: %v", err)
		}
	}
	if _, err := s.verify(ctx, fifth, from); err != nil {
		t.Errorf("newest secret: %v", err)
	}
	if _, _, err := s.rotate(ctx, "nobody", 0, noAudit); !errors.Is(err, errNoSuchToken) {
		t.Errorf("rotate an unknown name: %v", err)
	}
	s.path = filepath.Join(s.path, "not-a-dir", tokenStoreFile)
	if _, _, err := s.rotate(ctx, "ci", 0, noAudit); err == nil {
		t.Fatal("rotate succeeded although the store could not be written")
	}
	if _, err := s.verify(ctx, fifth, from); err != nil {
		t.Errorf("a rotation that was not written took effect: %v", err)
	}
}

func mustRead(t *testing.T, path string) []*tokenRecord {
	t.Helper()
	records, err := readTokenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return records
}

// TestLastAdminKept: the last active admin token cannot be revoked; read
// tokens, expired admins and the same token's older secrets do not count.
func TestLastAdminKept(t *testing.T) {
	s, clock := newTestStore(t)
	ctx := context.Background()
	s.create(ctx, "root", "", 0, noAudit)
	s.create(ctx, "reader", scopeRead, 0, noAudit)
	s.create(ctx, "brief", "", time.Minute, noAudit)
	s.rotate(ctx, "root", time.Hour, noAudit) // its old secret still works, but is not another admin
	if err := s.revoke("brief", noAudit); err != nil {
		t.Fatalf("revoke an admin while another exists: %v", err)
	}
	s.create(ctx, "brief", "", time.Minute, noAudit)
	clock.advance(time.Minute)
	if err := s.revoke("root", noAudit); !errors.Is(err, errLastAdmin) {
		t.Errorf("revoke the last admin (the other expired): %v", err)
	}
	if err := s.revoke("reader", noAudit); err != nil {
		t.Errorf("revoke a read token: %v", err)
	}
	if len(s.list()) != 1 {
		t.Errorf("after the refusal: %+v", s.list())
	}
}

// TestMaxTTLInStore: created and rotated tokens must expire within maxTTL
// of now; the bootstrap token is exempt, but not rotated over the API.
func TestMaxTTLInStore(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := context.Background()
	s.create(ctx, "old", "", 0, noAudit) // before the limit was set
	s.add(ctx, newAPIToken(), &tokenRecord{Name: bootstrapName, Bootstrap: true}, 0, nil, 0, noAudit)
	s.maxTTL = time.Hour
	cases := []struct {
		name string
		ttl  time.Duration
		ok   bool
	}{{"none", 0, false}, {"longer", time.Hour + time.Second, false}, {"equal", time.Hour, true}, {"shorter", time.Minute, true}}
	for _, c := range cases {
		_, _, err := s.create(ctx, c.name, "", c.ttl, noAudit)
		if c.ok != (err == nil) || (!c.ok && (!errors.Is(err, errMaxTTL) || !strings.Contains(err.Error(), "--max-ttl of 1h0m0s; give it a ttl_secs (--ttl) of at most 3600 seconds"))) {
			t.Errorf("create %s: %v", c.name, err)
		}
	}
	if _, _, err := s.rotate(ctx, "equal", 0, noAudit); err != nil {
		t.Errorf("rotate a token within the limit: %v", err)
	}
	if _, _, err := s.rotate(ctx, "old", 0, noAudit); !errors.Is(err, errMaxTTL) || !strings.Contains(err.Error(), "rotation keeps the expiry") {
		t.Errorf("rotate a token that never expires: %v", err)
	}
	if _, _, err := s.rotate(ctx, bootstrapName, 0, noAudit); !errors.Is(err, errMaxTTL) || !strings.Contains(err.Error(), "restart the daemon with a new --api-token") {
		t.Errorf("rotate the bootstrap token: %v", err)
	}
}

// TestAllowsAndGrants: source bindings by CIDR (IPv4-mapped remotes count
// as IPv4) and what each scope grants.
func TestAllowsAndGrants(t *testing.T) {
	bound := &tokenRecord{AllowFrom: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::1/128"), netip.MustParsePrefix("fe80::/64")}}
	for remote, want := range map[string]bool{
		"10.1.2.3:5000": true, "[::ffff:10.1.2.3]:5000": true, "[::1]:5000": true, "[fe80::1%eth0]:5000": true, "[fe81::1%eth0]:5000": false,
		"11.0.0.1:5000": false, "127.0.0.1:5000": false, "garbage": false, "": false,
	} {
		if got := bound.allows(remote); got != want {
			t.Errorf("allows(%q) = %v, want %v", remote, got, want)
		}
	}
	if !(&tokenRecord{}).allows("garbage") {
		t.Error("an unbound token is refused")
	}
	admin, read := &tokenRecord{Scope: scopeAdmin}, &tokenRecord{Scope: scopeRead}
	if !admin.grants(scopeAdmin) || !admin.grants(scopeRead) || read.grants(scopeAdmin) || !read.grants(scopeRead) || (&tokenRecord{Scope: "other"}).grants(scopeRead) {
		t.Error("scope grants are wrong")
	}
}

// TestRevokedAndExpiredNeverReachArgon2: a revoked or expired token whose
// lookup key is known is refused on its record's state, without an Argon2
// run, however often it is presented.
func TestRevokedAndExpiredNeverReachArgon2(t *testing.T) {
	s, clock := newTestStore(t)
	ctx := context.Background()
	revoked, _, _ := s.create(ctx, "revoked", "", 0, noAudit)
	expired, _, _ := s.create(ctx, "expired", "", time.Hour, noAudit)
	if err := s.revoke("revoked", noAudit); err != nil {
		t.Fatal(err)
	}
	clock.advance(time.Hour)
	runs := s.argonRuns.Load()
	for range 10 {
		if _, err := s.verify(ctx, revoked, ""); !errors.Is(err, errTokenRevoked) {
			t.Fatalf("revoked token: %v", err)
		}
		if _, err := s.verify(ctx, expired, ""); !errors.Is(err, errTokenExpired) {
			t.Fatalf("expired token: %v", err)
		}
	}
	if got := s.argonRuns.Load() - runs; got != 0 {
		t.Errorf("revoked and expired tokens ran Argon2 %d times, want 0", got)
	}
}

// holdArgon2 makes every Argon2 run of s wait until release is closed and
// reports each run's start on entered.
func holdArgon2(s *tokenStore) (entered <-chan struct{}, release chan struct{}) {
	in, release := make(chan struct{}, 1000), make(chan struct{})
	s.hash = func(token, salt []byte) []byte {
		in <- struct{}{}
		<-release
		return argonKey(token, salt)
	}
	return in, release
}

// waitEntered waits, for at most a minute, until n Argon2 runs have started.
func waitEntered(t *testing.T, entered <-chan struct{}, n int) {
	t.Helper()
	for i := range n {
		select {
		case <-entered:
		case <-time.After(time.Minute):
			t.Fatalf("%d of %d Argon2 runs started within a minute", i, n)
		}
	}
}

// TestRevokeDuringArgon2Wins: a token revoked while its first verification
// is inside Argon2 is refused by that verification, and not remembered.
func TestRevokeDuringArgon2Wins(t *testing.T) {
	s, tok := storeWithAlice(t)
	ctx := context.Background()
	entered, release := holdArgon2(s)
	result := make(chan error, 1)
	go func() {
		_, err := s.verify(ctx, tok, "")
		result <- err
	}()
	waitEntered(t, entered, 1)
	if err := s.revoke("alice", noAudit); err != nil {
		t.Fatal(err)
	}
	close(release)
	if err := <-result; !errors.Is(err, errTokenRevoked) {
		t.Errorf("verification that was inside Argon2 during the revoke: %v, want %v", err, errTokenRevoked)
	}
	if _, err := s.verify(ctx, tok, ""); !errors.Is(err, errTokenRevoked) {
		t.Errorf("verification after: %v, want %v", err, errTokenRevoked)
	}
}

// TestKnownPrefixFloodBounded is BenchmarkKnownPrefixFlood's promise as a
// test: wrong secrets under known lookup keys each cost one Argon2 run, and
// no more than the bound run at once. Every run is held inside Argon2, so
// the bound's slots stay taken; the flood's requests then end (their
// context is cancelled, as a client's request ends), and by then each one
// has either given up waiting or got in. Without the bound all get in.
func TestKnownPrefixFloodBounded(t *testing.T) {
	s, _ := newTestStore(t)
	bound := cap(s.argonSlots)
	if want := max(1, min(runtime.NumCPU()/2, 4)); bound != want {
		t.Fatalf("Argon2 bound is %d on %d CPUs, want half the CPUs, at least 1 and at most 4: %d", bound, runtime.NumCPU(), want)
	}
	flood := 3 * bound
	var wrong []string // one known lookup key each, a wrong secret
	for i := range flood {
		tok, _, err := s.create(context.Background(), fmt.Sprintf("t%d", i), "", 0, noAudit)
		if err != nil {
			t.Fatal(err)
		}
		wrong = append(wrong, tok[:8+lookupLen]+strings.Repeat("0", 64-lookupLen))
	}
	entered, release := holdArgon2(s)
	ctx, cancel := context.WithCancel(context.Background())
	results := make(chan error, flood)
	for _, tok := range wrong {
		go func() {
			_, err := s.verify(ctx, tok, "")
			results <- err
		}()
	}
	waitEntered(t, entered, bound)
	cancel()
	gaveUp, in := 0, bound
	for deadline := time.After(time.Minute); gaveUp+in < flood; {
		select {
		case err := <-results:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("a request that waited for Argon2: %v, want its own end", err)
			}
			gaveUp++
		case <-entered:
			in++
		case <-deadline:
			t.Fatalf("after a minute %d requests gave up and %d got into Argon2, of %d", gaveUp, in, flood)
		}
	}
	close(release)
	for range in {
		if err := <-results; !errors.Is(err, errTokenMismatch) {
			t.Errorf("a wrong secret that got into Argon2: %v, want %v", err, errTokenMismatch)
		}
	}
	if in > bound {
		t.Errorf("%d Argon2 runs at once, bound %d", in, bound)
	}
	t.Logf("flood of %d: %d ran Argon2 at once (bound %d), %d gave up waiting", flood, in, bound, gaveUp)
}

// TestStoreRefusesMalformedToken: the store itself refuses a secret that is
// not a helyos token, whatever the caller checked before.
func TestStoreRefusesMalformedToken(t *testing.T) {
	s, _ := newTestStore(t)
	for _, token := range []string{"", "secret", "nxa-api_" + strings.Repeat("AB", 32), "nxa_" + strings.Repeat("a", 64)} {
		if _, err := s.add(context.Background(), token, &tokenRecord{Name: "x"}, 0, nil, 0, noAudit); err == nil {
			t.Errorf("add(%q) stored it", token)
		}
	}
	if len(s.list()) != 0 {
		t.Errorf("records after refused adds: %v", s.list())
	}
}
