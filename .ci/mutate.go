//go:build ignore

// Mutation check, run by .ci/mutate: each line of the table breaks one
// security promise with a one-line change to a copy of the tree, and the
// tests it names must then fail. A mutation the tests survive, or one whose
// old text no longer matches exactly once (the code moved: update the line),
// fails the step. `.ci/mutate WORD` runs only the lines whose promise or
// tests contain WORD; `.ci/mutate -stale` only checks that every old text
// still matches exactly once, which takes a second.
package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"
)

// mutation: in file, replace old (which must occur exactly once) by new;
// the tests matched by the -run regexp must then fail.
type mutation struct{ file, old, new, tests, promise string }

var mutations = []mutation{
	{"tokens.go", `return subtle.ConstantTimeCompare(got, want) == 1, nil`, `return subtle.ConstantTimeCompare(got, want) >= 0, nil`, `^TestCheapRefusals$`, "a wrong secret fails the constant-time compare"},
	{"tokens.go", `len(body) != tokenHexLen || !isLowerHex(body) {`, `len(body) != tokenHexLen {`, `^TestTokenFormat$|^TestCheapRefusals$`, "a token of the wrong shape is refused before any lookup"},
	{"tokens.go", `case r.RevokedAt != nil && !now.Before(*r.RevokedAt):`, `case false:`, `^TestRevokeTakesEffectAtOnce$`, "a revoked token is refused on the next request"},
	{"tokens.go", `case r.ExpiresAt != nil && !now.Before(*r.ExpiresAt):`, `case false:`, `^TestExpiry$`, "an expired token is refused"},
	{"tokens.go", `rec = s.byLookup[lookup]`, `rec = s.byLookup[lookup]; if rec == nil && len(s.records) > 0 { rec = s.records[0] }`, `^TestCheapRefusals$`, "random tokens never reach Argon2"},
	{"tokens.go", `case state != nil:`, `case state != nil && false:`, `^TestRevokedAndExpiredNeverReachArgon2$`, "revoked and expired tokens never reach Argon2"},
	{"tokens.go", `if err := rec.state(s.now()); err != nil {`, `if err := rec.state(s.now()); false && err != nil {`, `^TestRevokeDuringArgon2Wins$`, "a revoke during an Argon2 run wins"},
	{"tokens.go", `argonSlots: make(chan struct{}, max(1,`, `argonSlots: make(chan struct{}, 64+max(1,`, `^TestKnownPrefixFloodBounded$|^TestArgonRunsBounded$`, "Argon2 runs are bounded"},
	{"tokens.go", `max(1, min(runtime.NumCPU()/2, 4))`, `max(1, runtime.NumCPU())`, `^TestKnownPrefixFloodBounded$`, "the Argon2 bound is half the CPUs, at most 4"},
	{"tokens.go", "regexp.MustCompile(`(?i)nxa-api_[0-9a-f]{8,}`)", "regexp.MustCompile(`(?i)nxa-api_[0-9a-f]{80,}`)", `^TestCredentialContextSet$|^TestCLIRedactsTokensInErrors$`, "a token typed where a name belongs is redacted"},
	{"daemon.go", `case !c.insecureHTTP:`, `case false:`, `^TestGuardrails$/^0\.0\.0\.0$/^tls=off$`, "guardrail: plain HTTP off loopback needs --insecure-http"},
	{"daemon.go", `case !givenUsable && store.activeCount() == 0:`, `case false && !givenUsable:`, `^TestGuardrails$/^0\.0\.0\.0$/^tls=off$/^insecure-http$`, "guardrail: plain HTTP off loopback needs a token"},
	{"daemon.go", `return c.tlsMode == "on" || (c.tlsMode == "auto" && (c.tlsCert != "" || !isLoopback(c.host)))`, `return c.tlsMode == "on" || (c.tlsMode == "auto" && c.tlsCert != "")`, `^TestGuardrails$/^0\.0\.0\.0$/^tls=auto$`, "--tls auto serves HTTPS off loopback"},
	{"tls.go", `net.ParseIP(host).IsLoopback()`, `(net.ParseIP(host).IsLoopback() || net.ParseIP(host).IsUnspecified())`, `^TestIsLoopback$|^TestGuardrails$/^0\.0\.0\.0$/^tls=off$`, "loopback detection: 0.0.0.0 is not loopback"},
	{"config.go", `f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")`, `f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)`, `^TestWriteFileAtomic$`, "state files are replaced whole, 0600 from the start"},
	{"tokens.go", "RevokedAt  *time.Time     `json:\"revoked_at,omitempty\"`", "RevokedAt  *time.Time     `json:\"-\"`", `^TestRestartKeepsState$`, "a revocation is on disk and survives a restart"},
	{"tls.go", `if err == nil && pair.Leaf == nil {`, `if false {`, `^TestLeafWithoutX509KeyPairLeaf$`, "a certificate's leaf is parsed whatever GODEBUG says"},
	{"tls.go", `case errors.Is(certErr, os.ErrNotExist) && errors.Is(keyErr, os.ErrNotExist):`, `case true:`, `^TestRestartKeepsState$`, "the CA survives restarts"},
	{"daemon.go", `if err := os.Chmod(c.dataDir, 0o700); err != nil {`, `if err := os.Chmod(c.dataDir, 0o755); err != nil {`, `^TestFileModes$`, "the data dir is 0700"},
	{"config.go", `if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {`, `if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {`, `^TestUpdateConfigFilesAndModes$`, "the config folder is 0700"},
	{"config.go", `err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)`, `err = nil`, `^TestUpdateConfigConcurrent$`, "config saves are locked"},
	{"daemon.go", `if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {`, `if err := error(nil); err != nil {`, `^TestDataDirInUse$`, "one daemon per data dir"},
	{"server.go", `body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))`, `body, err := io.ReadAll(r.Body)`, `^TestRequestBodyTable$/^too_large$`, "request bodies are capped at 1 MiB"},
	{"server.go", `rec, err = s.tokens.verify(r.Context(), token, r.RemoteAddr)`, `rec, err = &tokenRecord{Name: token}, nil`, `^TestBearerHeaderTable$`, "protected routes verify the bearer token"},
	{"server.go", `{"/api/v1/", scopeRead, handleNotFound},`, `{"/api/v1/none/", scopeRead, handleNotFound},`, `^TestRoutes$`, "unknown API paths answer 401 to anonymous callers"},
	{"server.go", `!strings.EqualFold(scheme, "bearer") ||`, `!strings.EqualFold(scheme, "bearer") && scheme != "Basic" ||`, `^TestBearerHeaderTable$/^basic_scheme$`, "only the Bearer scheme carries a token"},
	{"server.go", `writeError(rec, http.StatusInternalServerError, "internal error")`, `rec.WriteHeader(http.StatusOK)`, `^TestPanicBecomes500$`, "a panic becomes a JSON 500"},
	{"server.go", `IdleTimeout:       cmp.Or(s.timeouts.idle, serverIdleTimeout),`, ``, `^TestServerTimeoutsAsDocumented$`, "idle connections are closed after 2 minutes"},
	{"server.go", `ReadTimeout:       cmp.Or(s.timeouts.read, serverReadTimeout),`, ``, `^TestServerTimeoutsAsDocumented$`, "a whole request must arrive within 30 s"},
	{"server.go", `map[string]string{"error": redactTokens(msg)})`, `map[string]string{"error": msg})`, `^TestNoSecretsInOutput$`, "no error answer repeats a token"},
	{"server.go", `s.metrics.authFailures.Add(1)`, `s.metrics.authFailures.Add(1); s.logger.Printf("refused %q", token)`, `^TestNoSecretsInOutput$`, "no token in a log line"},
	{"cli.go", `login := "helyos login " + server`, `login := "helyos login " + server + " --token " + created.Token`, `^TestReliabilitySecretScan$|^TestCLIAuthTokens$`, "a new token's secret appears once, on stdout"},
	{"daemon.go", `switch generated := plaintext != "" && c.apiToken == ""; {`, `switch generated := plaintext != ""; {`, `^TestAPITokenFlag$`, "a token given by the operator is never printed"},
	{"server.go", `if !s.plainHTTP {`, `if false {`, `^TestTLSCertificate$`, "a daemon with TLS on accepts TLS connections only"},
	{"tls.go", `return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: getCert}`, `return &tls.Config{MinVersion: tls.VersionTLS10, GetCertificate: getCert}`, `^TestTLSCertificate$`, "the daemon refuses TLS below 1.2"},
	{"tls.go", `sum := sha256.Sum256(der)`, `sum := sha256.Sum256(der[1:])`, `^TestCAEndpointAndFingerprint$`, "the fingerprint is the SHA-256 of the CA's DER"},
	{"localpeer.go", `if uid, err := strconv.Atoi(f[7]); err != nil || (uid != 0 && uid != os.Getuid()) {`, `if uid, err := strconv.Atoi(f[7]); err != nil || (uid != 0 && uid != os.Getuid() && false) {`, `^TestCheckPeer$`, "no token to another user's local listener"},
	{"login.go", `sanitize(cmp.Or(v.Project, "-"))`, `cmp.Or(v.Project, "-")`, `^TestCLIContextListEscapes$`, "context ls escapes hand-edited text"},
	{"terminal.go", `case strconv.IsPrint(r):`, `case strconv.IsPrint(r) || true:`, `^TestCLIEscapesServerText$`, "server text is escaped before it is printed"},
	{"client.go", `CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },`, `CheckRedirect: nil,`, `^TestCLIUnexpectedStatus$`, "no redirect is followed"},
	{"login.go", `if old, _ := normalizeServer(c.Server); strings.HasPrefix(old, "https://") && strings.HasPrefix(server, "http://") {`, `if old, _ := normalizeServer(c.Server); strings.HasPrefix(old, "https://") && strings.HasPrefix(server, "http://") && false {`, `^TestCLIContextSetNoDowngrade$`, "context set never downgrades https to http"},
	{"config.go", `if uid != 0 && int(uid) != me || fi.Mode().Perm()&0o022 != 0 {`, `if false {`, `^TestCLIRefusesForeignConfig$`, "a config another user could write is refused"},
	{"config.go", `backup = data`, `backup = old`, `^TestCLILogoutLeavesNoToken$`, "no file keeps a token after logout"},
	{"config.go", `if c.CASHA256 != "" && !sameFingerprint(c.CASHA256, fingerprint(cert.Raw)) {`, `if false {`, `^TestCLIPinContradictions$`, "a ca-sha256 that does not match the ca is refused"},
	{"config.go", `return fmt.Errorf("unknown key %s%s (known keys: %s)", tomlKey(key), where, strings.Join(known, ", "))`, `return nil`, `^TestConfigParseRefuses$`, "the config reader refuses a key it does not know: a typo never drops a setting"},
	{"config.go", `case r.keys[key]:`, `case false:`, `^TestConfigParseRefuses$`, "the config reader refuses a repeated key, as every TOML parser does"},
	{"login.go", `if !sameFingerprint(caFingerprint, fp) {`, `if false {`, `^TestCLILoginRefusals$/^wrong_fingerprint$`, "login pins nothing whose fingerprint differs"},
	{"tls.go", `cfg.RootCAs.AddCert(pinnedCA)`, `cfg.InsecureSkipVerify = true`, `^TestCLICertificateRefusals$/^pinned_to_A`, "a pinned context trusts only its CA"},
	{"client.go", `ctx = nil // its token and pin belong to another daemon`, `_ = ctx`, `^TestCLICertificateRefusals$/drops_the_pin`, "a context's pin is used only for its own server"},
	{"tokens.go", `return r.Scope == scopeAdmin || r.Scope == need`, `return true`, `^TestAllowsAndGrants$`, "a scope grants only what it names"},
	{"server.go", `{"POST /api/v1/tokens", scopeAdmin, s.handleCreateToken},`, `{"POST /api/v1/tokens", scopeRead, s.handleCreateToken},`, `^TestRouteTableMatchesSpec$`, "each route has the scope SPEC §5 gives it"},
	{"server.go", `if !rec.grants(need) {`, `if false {`, `^TestScopeTable$`, "every protected request's scope is checked"},
	{"tokens.go", `if len(r.AllowFrom) == 0 {`, `if true {`, `^TestAllowsAndGrants$`, "a bound token is refused outside its CIDRs"},
	{"tokens.go", `outside := state == nil && rec != nil && !rec.allows(remote)`, `outside := false`, `^TestBoundTokens$`, "verify checks a token's bindings"},
	{"tokens.go", `retired := s.retireLocked(rec.Name, s.now().UTC().Truncate(time.Second).Add(grace))`, `retired, _ := func() {}, grace`, `^TestRotate$`, "rotation retires the old secret"},
	{"tokens.go", `retired := s.retireLocked(rec.Name, s.now().UTC().Truncate(time.Second).Add(grace))`, `retired := s.retireLocked(rec.Name, s.now().UTC().Truncate(time.Second).Add(2*grace))`, `^TestRotate$`, "the old secret stops at the end of the grace"},
	{"tokens.go", `rec := &tokenRecord{Name: old.Name, Scope: old.Scope, ExpiresAt: old.ExpiresAt, AllowFrom: old.AllowFrom, Bootstrap: old.Bootstrap}`, `rec := &tokenRecord{Name: old.Name, Scope: old.Scope, ExpiresAt: old.ExpiresAt, Bootstrap: old.Bootstrap}`, `^TestRotate$`, "rotation keeps the token's bindings"},
	{"tokens.go", `maps.DeleteFunc(s.verified, func(_ [32]byte, r *tokenRecord) bool { return !r.active(now) })`, `maps.DeleteFunc(s.verified, func(_ [32]byte, r *tokenRecord) bool { return false && !r.active(now) })`, `^TestRotate$`, "retired secrets leave the verification cache"},
	{"tokens.go", `if rec.Scope == scopeAdmin && !slices.ContainsFunc(s.records, func(r *tokenRecord) bool {`, `if false && !slices.ContainsFunc(s.records, func(r *tokenRecord) bool {`, `^TestLastAdminKept$`, "the last active admin token cannot be revoked"},
	{"server.go", `writeError(w, http.StatusConflict, fmt.Sprintf("token %q is the last active admin token;`, `writeError(w, http.StatusBadRequest, fmt.Sprintf("token %q is the last active admin token;`, `^TestLastAdminRefused$`, "revoking the last admin token answers 409"},
	{"tokens.go", `if s.maxTTL > 0 && !rec.Bootstrap && (rec.ExpiresAt == nil || rec.ExpiresAt.Sub(now) > s.maxTTL) {`, `if s.maxTTL > 0 && !rec.Bootstrap && rec.ExpiresAt == nil {`, `^TestMaxTTLInStore$`, "--max-ttl refuses a longer ttl"},
	{"tokens.go", `if old.Bootstrap && s.maxTTL > 0 {`, `if false {`, `^TestMaxTTLInStore$`, "--max-ttl: the bootstrap token is not rotated over the API"},
	{"tokens.go", `if err := record(info, outcomeSuccess); err != nil {`, `if err := record(info, outcomeSuccess); false && err != nil {`, `^TestStoreRecordsBeforeChanging$`, "no token change without its audit record"},
	{"server.go", `writeError(w, http.StatusServiceUnavailable, "the audit log cannot be written, so nothing was changed; the daemon's log says why")`, `writeError(w, http.StatusInternalServerError, "x")`, `^TestAuditWriteFailureFailsClosed$`, "an audit log that cannot be written answers 503"},
	{"audit.go", `rec.Seq, rec.Prev = a.seq+1, a.prev`, `rec.Seq, rec.Prev = a.seq+1, zeroHash`, `^TestAuditChainAcrossRestarts$`, "each audit record's prev is the hash of the line before"},
	{"audit.go", `a.seq, a.prev, a.unclean = rec.Seq, hashLine(line), rec.Event != "daemon.stopped"`, `a.seq, a.prev, a.unclean = rec.Seq, zeroHash, rec.Event != "daemon.stopped"`, `^TestAuditChainAcrossRestarts$`, "the audit chain continues across restarts"},
	{"audit.go", `case sum.Records > 0 && rec.Prev != prevHash:`, `case sum.Records < 0 && rec.Prev != prevHash:`, `^TestAuditVerifyCommand$`, "audit verify checks prev"},
	{"audit.go", `case sum.Records > 0 && rec.Seq != sum.LastSeq+1:`, `case false:`, `^TestAuditVerifyCommand$`, "audit verify checks seq"},
	{"server.go", `if err := st.tokens.check(st.caller); err != nil {`, `if err := st.tokens.check(st.caller); false && err != nil {`, `^TestEventsRefusals$`, "an event stream ends when its token is revoked"},
	{"server.go", `case own >= l.perIP:`, `case false:`, `^TestConnectionCaps$`, "connections are capped per address"},
	{"tokens.go", `q = &keyQueue{turn: make(chan struct{}, 1)}`, `q = &keyQueue{turn: make(chan struct{}, argonQueuePerKey)}`, `^TestArgonQueuePerKey$`, "one Argon2 run per lookup key at a time"},
	{"tls.go", `case block == nil || block.Type != "CERTIFICATE" || len(block.Headers) > 0 || len(bytes.TrimSpace(rest)) > 0 ||`, `case block == nil || block.Type != "CERTIFICATE" || len(block.Headers) > 0 || len(bytes.TrimSpace(rest)) < 0 ||`, `^TestCAFileHoldsOneCertificate$`, "a ca.pem holding more than one certificate is refused"},
	{"tls.go", `return &certAuthority{cert: cert, key: signer, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})}, nil`, `return &certAuthority{cert: cert, key: signer, pem: certPEM}, nil`, `^TestCAFileHoldsOneCertificate$|^TestCAEndpointAndFingerprint$`, "/api/v1/ca serves the re-encoded certificate"},
	{"daemon.go", `f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)`, `f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)`, `^TestBootstrapTokenFileNeverOverwritten$`, "a bootstrap-token file left there is never overwritten"},
	{"daemon.go", `f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)`, `f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)`, `^TestDaemonLogFormats$`, "the bootstrap-token file is 0600"},
	{"daemon.go", `if mode := fi.Mode().Perm(); mode&0o022 != 0 {`, `if mode := fi.Mode().Perm(); mode&0 != 0 {`, `^TestDataDirOwnedByAnotherUser$`, "a data dir writable by group or others is refused"},
	{"server.go", `case seen[key]:`, `case false:`, `^TestRequestBodyTable$`, "repeated JSON fields are a 400"},
	{"server.go", `case strings.Trim(key, "abcdefghijklmnopqrstuvwxyz0123456789_") != "":`, `case false:`, `^TestRequestBodyTable$`, "case-variant JSON fields are a 400"},
	{"tokens.go", "lookup, ok := parseAPIToken(token) // checked at flag time too: the store stays closed to a bad one\n\tif !ok {", "lookup, ok := parseAPIToken(token) // checked at flag time too: the store stays closed to a bad one\n\tif false && !ok {", `^TestStoreRefusesMalformedToken$`, "the token store refuses a secret that is not a helyos token"},
	{"server.go", `s.metrics.write(&text, s.tokens)`, `s.metrics.write(w, s.tokens)`, `^TestMetricsReaderCannotStallRequests$`, "a /metrics client that does not read holds up no request"},
}

func main() {
	if len(os.Args) == 2 && os.Args[1] == "-stale" {
		os.Exit(checkStale())
	}
	filter := strings.Join(os.Args[1:], " ")
	start := time.Now()
	// One mutation per CPU at a time: most of each is a compile and a link.
	rows := make([]string, len(mutations))
	results := make([]string, len(mutations))
	slots := make(chan struct{}, runtime.NumCPU())
	var wg sync.WaitGroup
	for i, m := range mutations {
		if filter != "" && !strings.Contains(m.promise+" "+m.tests, filter) {
			continue
		}
		wg.Go(func() {
			slots <- struct{}{}
			defer func() { <-slots }()
			t0 := time.Now()
			results[i] = apply(m)
			rows[i] = fmt.Sprintf("%-3d %-8s %5.1fs  %s: %s (%s)", i+1, results[i], time.Since(t0).Seconds(), m.promise, m.tests, m.file)
			fmt.Fprintln(os.Stderr, rows[i])
		})
	}
	wg.Wait()
	caught, total := 0, 0
	fmt.Printf("%-3s %-8s %6s  %s\n", "#", "result", "time", "promise: tests (file)")
	for i, row := range rows {
		if row != "" {
			fmt.Println(row)
			total++
			if results[i] == "caught" {
				caught++
			}
		}
	}
	fmt.Printf("caught %d/%d mutations in %s\n", caught, total, time.Since(start).Round(time.Second))
	if caught < total || total == 0 {
		os.Exit(1)
	}
}

// checkStale reports every line whose old text does not occur exactly once
// in its file, and says where it occurs if it moved to another file.
func checkStale() int {
	stale := 0
	for i, m := range mutations {
		src, err := os.ReadFile(m.file)
		if n := strings.Count(string(src), m.old); err != nil || n != 1 {
			stale++
			others, _ := filepath.Glob("*.go")
			var in []string
			for _, f := range others {
				if b, _ := os.ReadFile(f); strings.Count(string(b), m.old) == 1 {
					in = append(in, f)
				}
			}
			fmt.Printf("%d STALE in %s (found %d times; once in %v): %s\n", i+1, m.file, n, in, m.promise)
		}
	}
	fmt.Printf("%d of %d lines stale\n", stale, len(mutations))
	return min(stale, 1)
}

// apply runs one mutation on a copy of the tree and says what came of it:
// caught, SURVIVED, or a reason it could not be tried.
func apply(m mutation) string {
	dir, err := os.MkdirTemp("", "helyos-mutant-")
	if err != nil {
		return "ERROR " + err.Error()
	}
	defer os.RemoveAll(dir)
	entries, err := os.ReadDir(".")
	if err != nil {
		return "ERROR " + err.Error()
	}
	for _, e := range entries {
		if e.Name() == ".git" {
			continue
		}
		if out, err := exec.Command("cp", "-r", e.Name(), dir).CombinedOutput(); err != nil {
			return fmt.Sprintf("ERROR copy: %v %s", err, out)
		}
	}
	path := filepath.Join(dir, m.file)
	src, err := os.ReadFile(path)
	if err != nil {
		return "ERROR " + err.Error()
	}
	if n := strings.Count(string(src), m.old); n != 1 {
		return fmt.Sprintf("STALE (old text found %d times)", n)
	}
	if err := os.WriteFile(path, []byte(strings.Replace(string(src), m.old, m.new, 1)), 0o600); err != nil {
		return "ERROR " + err.Error()
	}
	cmd := exec.Command("go", "test", "-count=1", "-vet=off", "-run", m.tests, ".")
	cmd.Dir, cmd.Env = dir, append(os.Environ(), "GOFLAGS=-ldflags=-w") // no debug info: links faster
	out, err := cmd.CombinedOutput()
	switch {
	case strings.Contains(string(out), "[build failed]") || strings.Contains(string(out), "build helyos:"):
		fmt.Fprintf(os.Stderr, "%s\n", out)
		return "NOBUILD"
	case err == nil:
		return "SURVIVED"
	case !strings.Contains(string(out), "--- FAIL"):
		fmt.Fprintf(os.Stderr, "%s\n", out)
		return "ERROR"
	}
	return "caught"
}
