package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"debug/buildinfo"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The shared test harness. TestMain builds the binary once; the helpers in
// this file are the one way every test file starts a daemon, runs the CLI,
// talks HTTP to a daemon, waits for a state to arrive and reads what a run
// wrote. A helper only one file needs, and the in-process fixtures of one
// type (fakeClock and newTestStore in tokens_test.go, newTestAudit and
// readAuditFile in audit_test.go, the Config comparisons in config_test.go),
// live beside their tests.

// helyosBin is the binary every black-box test runs, built once by TestMain;
// binVersion is the version it must report, from its own build info.
var helyosBin, binVersion string

func TestMain(m *testing.M) {
	if addr := os.Getenv("HELYOS_TEST_IMPOSTOR"); addr != "" {
		runImpostor(addr) // this binary re-executed as another user
		return
	}
	dir, err := os.MkdirTemp("", "helyos-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	helyosBin = filepath.Join(dir, "helyos")
	if out, err := exec.Command("go", "build", "-o", helyosBin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build helyos: %v\n%s", err, out)
		os.Exit(1)
	}
	info, err := buildinfo.ReadFile(helyosBin)
	if err != nil {
		fmt.Fprintf(os.Stderr, "read the build info of helyos: %v\n", err)
		os.Exit(1)
	}
	binVersion = versionOf(info)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// syncBuffer collects a process's output while tests read it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// testEnv is a clean environment: no HELYOS_* from the developer's shell.
func testEnv(home string, extra ...string) []string {
	return append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + home, "LANG=C"}, extra...)
}

// testDaemon is a real daemon process on a loopback port.
type testDaemon struct {
	home    string
	dataDir string
	url     string // scheme://127.0.0.1:PORT, whatever address it bound
	port    string
	token   string // the first-run token, when this start printed one
	fp      string // the CA fingerprint from the login hint, when TLS is on
	cmd     *exec.Cmd
	out     *syncBuffer
	exited  <-chan struct{}
}

var (
	listeningRE = regexp.MustCompile(`listening on (https?)://\S+:(\d+)["\n]`)
	tokenLineRE = regexp.MustCompile(`(?m)^HELYOS_API_TOKEN=(nxa-api_[0-9a-f]{64})$`)
	hintRE      = regexp.MustCompile(`helyos login (\S+) --ca-fingerprint ([0-9a-f:]{95})`)
)

// startDaemon runs `helyos daemon --port 0` with HOME=home and the data dir
// inside it, waits until it listens, and stops it when the test ends.
func startDaemon(t testing.TB, home string, args []string, env ...string) *testDaemon {
	t.Helper()
	return startDaemonVia(t, nil, home, args, env...)
}

// startDaemonVia is startDaemon run by a wrapper that execs the daemon in
// its own process, such as prlimit.
func startDaemonVia(t testing.TB, via []string, home string, args []string, env ...string) *testDaemon {
	t.Helper()
	d := &testDaemon{home: home, dataDir: filepath.Join(home, ".helyos", "data"), out: &syncBuffer{}}
	all := append([]string{"daemon", "--port", "0"}, args...)
	d.cmd = exec.Command(helyosBin, all...)
	if len(via) > 0 {
		d.cmd = exec.Command(via[0], append(append(via[1:], helyosBin), all...)...)
	}
	if slices.Contains(env, journalStderr) {
		// As systemd does: $JOURNAL_STREAM names the stream that is stderr.
		d.cmd = exec.Command("/bin/sh", append([]string{"-c", `JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec "$0" "$@"`, helyosBin}, all...)...)
	}
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	d.exited = startProc(t, d.cmd, home, env)
	t.Cleanup(func() { d.stop(t) })
	pollUntil(t, fmt.Sprintf("daemon %v listening", args), func() bool {
		exited := isClosed(d.exited) // before the output is read: all of it is in by then
		if m := listeningRE.FindStringSubmatch(d.out.String()); m != nil {
			d.url, d.port = m[1]+"://127.0.0.1:"+m[2], m[2]
			return true
		}
		if exited {
			t.Fatalf("daemon %v exited before listening:\n%s", args, d.out.String())
		}
		return false
	}, d.out)
	if m := tokenLineRE.FindStringSubmatch(d.out.String()); m != nil {
		d.token = m[1]
	}
	if m := hintRE.FindStringSubmatch(d.out.String()); m != nil {
		d.fp = m[2]
	}
	return d
}

// stop sends SIGTERM and waits for a clean exit.
func (d *testDaemon) stop(t testing.TB) {
	select {
	case <-d.exited:
		return
	default:
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(time.Minute):
		d.cmd.Process.Kill()
		<-d.exited
		t.Errorf("daemon did not stop within a minute of SIGTERM:\n%s", d.out.String())
	}
}

// caPool trusts only this daemon's CA, read from its data dir.
func (d *testDaemon) caPool(t testing.TB) *x509.CertPool {
	t.Helper()
	pemBytes, err := os.ReadFile(filepath.Join(d.dataDir, caCertFile))
	if err != nil {
		t.Fatalf("read CA: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		t.Fatal("CA file holds no certificate")
	}
	return pool
}

// client is a plain net/http client that trusts only this daemon's CA.
func (d *testDaemon) client(t testing.TB) *http.Client {
	t.Helper()
	var pool *x509.CertPool
	if strings.HasPrefix(d.url, "https://") {
		pool = d.caPool(t)
	}
	c := pinnedClient(pool)
	t.Cleanup(c.CloseIdleConnections)
	return c
}

// pinnedClient is a plain net/http client that trusts only the CAs in pool
// (for goroutines that each want their own connection; they close it).
func pinnedClient(pool *x509.CertPool) *http.Client {
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 2 * time.Minute}
}

// do sends one request with token (if any) and returns status, headers, body.
func (d *testDaemon) do(t testing.TB, method, path, token, body string) (int, http.Header, string) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, d.url+path, r)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := d.client(t).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(data)
}

// createToken mints a token through the API and returns its secret.
func (d *testDaemon) createToken(t testing.TB, adminToken, name string, ttl int) string {
	t.Helper()
	secret, err := createOverHTTP(d.client(t), d.url, adminToken, name, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return secret
}

// createOverHTTP mints a token and returns its secret, or an error (for
// goroutines, which must not call t.Fatal).
func createOverHTTP(c *http.Client, base, admin, name string, ttl int) (string, error) {
	req, _ := http.NewRequest("POST", base+"/api/v1/tokens", strings.NewReader(fmt.Sprintf(`{"name":%q,"ttl_secs":%d}`, name, ttl)))
	req.Header.Set("Authorization", "Bearer "+admin)
	resp, err := c.Do(req)
	if err != nil {
		return "", fmt.Errorf("create token %q: %w", name, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("create token %q: %d %s %v", name, resp.StatusCode, body, err)
	}
	var created struct{ Token string }
	if err := json.Unmarshal(body, &created); err != nil || created.Token == "" {
		return "", fmt.Errorf("create token %q: bad answer %s", name, body)
	}
	return created.Token, nil
}

// cliResult is what one run of the client printed.
type cliResult struct {
	stdout, stderr string
	code           int
}

// runHelyos runs the binary once with HOME=home, the given stdin and extra
// environment, and returns what it printed and its exit code.
func runHelyos(t testing.TB, home, stdin string, env []string, args ...string) cliResult {
	t.Helper()
	cmd := exec.Command(helyosBin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr syncBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	select {
	case <-startProc(t, cmd, home, env):
	case <-time.After(2 * time.Minute):
		t.Fatalf("helyos %v did not finish within 2 minutes", args)
	}
	return cliResult{stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()}
}

// runRefusedDaemon runs `helyos daemon ARGS` that must refuse to start, and
// returns what it printed and its exit code. A daemon that starts listening
// instead is killed and fails the test at once, rather than at a timeout.
func runRefusedDaemon(t testing.TB, home string, env []string, args ...string) cliResult {
	t.Helper()
	cmd := exec.Command(helyosBin, append([]string{"daemon"}, args...)...)
	var stdout, stderr syncBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	exited := startProc(t, cmd, home, env)
	pollUntil(t, fmt.Sprintf("helyos daemon %v refusing to start", args), func() bool {
		if strings.Contains(stderr.String(), "listening on") {
			t.Fatalf("helyos daemon %v did not refuse to start:\n%s", args, stderr.String())
		}
		return isClosed(exited)
	}, &stderr)
	return cliResult{stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()}
}

// mustRun runs the client and fails the test on a non-zero exit.
func mustRun(t testing.TB, home string, env []string, args ...string) cliResult {
	t.Helper()
	r := runHelyos(t, home, "", env, args...)
	if r.code != 0 {
		t.Fatalf("helyos %v: exit %d\nstdout: %s\nstderr: %s", args, r.code, r.stdout, r.stderr)
	}
	return r
}

// mustReadFile returns the content of path; a file that cannot be read fails
// the test rather than compare as empty.
func mustReadFile(t testing.TB, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// permOf returns the permission bits of path.
func permOf(t testing.TB, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

// needTool finds an external program a test drives. Outside CI a missing
// tool skips the test; under CI (.ci/run sets CI=1 and installs them) it
// fails it, so the evidence cannot quietly disappear.
func needTool(t testing.TB, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		skipOrFailInCI(t, "%s not installed: %v", name, err)
	}
	return path
}

// cliConfigPath is where the client keeps its config under home.
func cliConfigPath(home string) string { return filepath.Join(home, ".helyos", "config.toml") }

// readCLIConfig parses the client's config under home.
func readCLIConfig(t testing.TB, home string) *Config {
	t.Helper()
	cfg, err := loadConfig(cliConfigPath(home))
	if err != nil {
		t.Fatalf("read client config: %v", err)
	}
	return cfg
}

// mustContext returns the named context from home's config or fails.
func mustContext(t testing.TB, home, name string) *Context {
	t.Helper()
	cfg := readCLIConfig(t, home)
	c := cfg.Context(name)
	if c == nil {
		t.Fatalf("no context %q; have %v", name, cfg.Names())
	}
	return c
}

// tlsDaemon starts a daemon that serves HTTPS on loopback (--tls on, and
// any more flags in args) in a home of its own, and checks it printed a
// token and a fingerprint.
func tlsDaemon(t testing.TB, args ...string) *testDaemon {
	t.Helper()
	d := startDaemon(t, t.TempDir(), append([]string{"--tls", "on"}, args...))
	if d.token == "" || d.fp == "" || !strings.HasPrefix(d.url, "https://") {
		t.Fatalf("daemon printed no token, fingerprint or https address:\n%s", d.out.String())
	}
	return d
}

// httpDaemon starts a plain-HTTP daemon on loopback (the default there).
func httpDaemon(t testing.TB) *testDaemon {
	t.Helper()
	d := startDaemon(t, t.TempDir(), nil)
	if d.token == "" || !strings.HasPrefix(d.url, "http://") {
		t.Fatalf("daemon printed no token or http address:\n%s", d.out.String())
	}
	return d
}

// wantFail checks a run failed with code and that stderr names every want.
func wantFail(t testing.TB, r cliResult, code int, wants ...string) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", r.code, code, r.stdout, r.stderr)
	}
	for _, w := range wants {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("stderr does not say %q:\n%s", w, r.stderr)
		}
	}
}

// decodeOutput unmarshals a command's --json output or fails.
func decodeOutput(t testing.TB, r cliResult, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(r.stdout), v); err != nil {
		t.Fatalf("stdout is not the JSON expected: %v\n%s", err, r.stdout)
	}
}

// whoamiName runs `whoami --json` and returns the token name.
func whoamiName(t testing.TB, home string, env []string, args ...string) string {
	t.Helper()
	var who struct{ Name string }
	decodeOutput(t, mustRun(t, home, env, append(args, "whoami", "--json")...), &who)
	return who.Name
}

// noTokenIn fails if any of the secrets shows up in what a run printed.
func noTokenIn(t testing.TB, r cliResult, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if s == "" {
			continue
		}
		hex := strings.TrimPrefix(s, "nxa-api_")
		if strings.Contains(r.stdout+r.stderr, hex) {
			t.Errorf("a token appears in the output:\nstdout: %s\nstderr: %s", r.stdout, r.stderr)
		}
	}
}

// writeScript writes an executable shell script into dir and returns its path.
func writeScript(t testing.TB, dir, name, body string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body), 0o700); err != nil {
		t.Fatal(err)
	}
	return path
}

// runTool runs a program with stdin closed and returns its combined output
// and exit code.
func runTool(t testing.TB, name string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(needTool(t, name), args...)
	cmd.Env = append(os.Environ(), "LANG=C")
	out, err := cmd.CombinedOutput()
	if err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			t.Fatalf("%s %v: %v", name, args, err)
		}
	}
	return string(out), cmd.ProcessState.ExitCode()
}

// filesUnder lists every file and folder below dir (relative paths).
func filesUnder(t testing.TB, dir string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && path != dir {
			rel, _ := filepath.Rel(dir, path)
			out = append(out, rel)
		}
		return nil
	})
	return out
}

// jsonEqual compares a JSON body with the expected JSON, ignoring layout.
func jsonEqual(t testing.TB, got, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal([]byte(got), &g); err != nil {
		t.Fatalf("body %q is not JSON: %v", got, err)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatal(err)
	}
	gb, _ := json.Marshal(g)
	wb, _ := json.Marshal(w)
	if string(gb) != string(wb) {
		t.Errorf("body = %s, want %s", gb, wb)
	}
}

// waitStatus polls GET /api/v1/whoami with token until it answers want, for
// states that arrive with time (expiry, the end of a grace period), and
// returns how many requests that took.
func waitStatus(t testing.TB, d *testDaemon, token string, want int) int {
	t.Helper()
	n := 0
	pollUntil(t, fmt.Sprintf("whoami answering %d", want), func() bool {
		n++
		code, _, _ := d.do(t, "GET", "/api/v1/whoami", token, "")
		return code == want
	})
	return n
}

// secretPart is the part of a token no output may ever show: all of it but
// the non-secret lookup key, less its last digit so that a token one digit
// off is caught too.
func secretPart(token string) string {
	return token[len(apiTokenPrefix)+lookupLen : len(token)-1]
}

// dialFrom opens a TCP connection to the daemon from the loopback address
// src (all of 127.0.0.0/8 is this machine on Linux).
func dialFrom(t testing.TB, src string, d *testDaemon) net.Conn {
	t.Helper()
	dialer := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
	c, err := dialer.Dial("tcp", "127.0.0.1:"+d.port)
	if err != nil {
		t.Fatalf("dial from %s: %v", src, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// answers sends req (an HTTP request, or its end) on c and returns the
// status of the answer; 0 when the daemon hung up without one, as it does
// at once to a connection over a cap; -1 when it did neither within 20 s.
func answers(c net.Conn, req string) int {
	c.SetDeadline(time.Now().Add(20 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, req); err != nil {
		return 0
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return -1
	}
	if err != nil {
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// metricValue reads one unlabelled sample from the daemon's /metrics.
func metricValue(t testing.TB, d *testDaemon, name string) float64 {
	t.Helper()
	_, _, body := d.do(t, "GET", "/metrics", "", "")
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}

// sendRandomTokens sends each random well-formed tokens on each of conns
// connections and returns how many were refused.
func sendRandomTokens(t testing.TB, d *testDaemon, conns, each int) int {
	pool := d.caPool(t)
	var wg sync.WaitGroup
	var refused atomic.Int64
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := pinnedClient(pool)
			defer client.CloseIdleConnections()
			for range each {
				req, _ := http.NewRequest("GET", d.url+"/api/v1/whoami", nil)
				req.Header.Set("Authorization", "Bearer "+newAPIToken())
				resp, err := client.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusUnauthorized {
					refused.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return int(refused.Load())
}

func copyFile(t testing.TB, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err == nil {
		err = os.WriteFile(to, data, 0o600)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// startProc starts cmd (the binary, or a wrapper that execs it) in a clean
// environment for home. The channel it returns closes once cmd has exited
// and its output is all copied; the test's end kills it if it still runs.
func startProc(t testing.TB, cmd *exec.Cmd, home string, env []string) <-chan struct{} {
	t.Helper()
	cmd.Env = testEnv(home, env...)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %v: %v", cmd.Args, err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		if !isClosed(exited) {
			cmd.Process.Kill()
			<-exited
		}
	})
	return exited
}

// pollUntil polls ok until it holds: the one way a test waits for a state
// that arrives with time. After 2 minutes it fails the test, saying what
// did not arrive and what each of show (a process's output) held then.
func pollUntil(t testing.TB, what string, ok func() bool, show ...fmt.Stringer) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Minute); !ok(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			for _, s := range show {
				what += "\n" + s.String()
			}
			t.Fatalf("%s: not within 2 minutes", what)
		}
	}
}

// skipOrFailInCI is how a test says what the machine lacks: outside CI it
// skips with that reason; under CI (.ci/run sets CI=1 and provides every
// tool, pseudo-terminals and IPv6 loopback) it fails.
func skipOrFailInCI(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf(format+" (CI must provide it: see .ci/run)", args...)
	}
	t.Skipf(format, args...)
}

// TestVersionOf: the version names the module version and, when the build
// recorded one, the commit, marked -dirty for a modified tree.
func TestVersionOf(t *testing.T) {
	t.Parallel()
	const rev = "6f17a47424a467eaec036dd4eec165a9910b3970"
	vcs := func(modified string) []debug.BuildSetting {
		return []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: modified}}
	}
	for _, tc := range []struct {
		version  string
		settings []debug.BuildSetting
		want     string
	}{
		{"(devel)", nil, "(devel)"},
		{"v1.2.0", nil, "v1.2.0"},
		{"v0.0.0-20261125063335-6f17a47424a4", vcs("false"), "v0.0.0-20261125063335-6f17a47424a4 (" + rev + ")"},
		{"v0.0.0-20261125063335-6f17a47424a4+dirty", vcs("true"), "v0.0.0-20261125063335-6f17a47424a4+dirty (" + rev + "-dirty)"},
	} {
		info := &debug.BuildInfo{Main: debug.Module{Path: "helyos", Version: tc.version}, Settings: tc.settings}
		if got := versionOf(info); got != tc.want {
			t.Errorf("versionOf(%s, %v) = %q, want %q", tc.version, tc.settings, got, tc.want)
		}
	}
}

// TestVersionNamesCommit builds helyos in a fresh git repository with a
// modified file: `helyos version` names that commit, marked -dirty, with no
// -ldflags. (The shared test binary may carry no VCS information: go build
// records none in a git worktree or under -buildvcs=false.)
func TestVersionNamesCommit(t *testing.T) {
	if testing.Short() {
		t.Skip("builds helyos once more")
	}
	t.Parallel()
	git := needTool(t, "git")
	dir := t.TempDir()
	files, _ := filepath.Glob("*.go")
	for _, f := range append(files, "go.mod", "go.sum") {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		copyFile(t, f, filepath.Join(dir, f))
	}
	run := func(name string, args ...string) string {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Dir, cmd.Env = dir, append(os.Environ(), "GOFLAGS=-buildvcs=true")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	run(git, "init", "-q")
	run(git, "add", ".")
	run(git, "-c", "user.name=test", "-c", "user.email=test@example.invalid", "commit", "-q", "-m", "test")
	rev := run(git, "rev-parse", "HEAD")
	os.WriteFile(filepath.Join(dir, "extra.go"), []byte("package main\n"), 0o600)
	run("go", "build", "-o", "helyos", ".")
	got := run(filepath.Join(dir, "helyos"), "version", "--server", "http://127.0.0.1:1")
	if !regexp.MustCompile(`^client: v0\.0\.0-\d{14}-` + rev[:12] + `\+dirty \(` + rev + `-dirty\)\n`).MatchString(got + "\n") {
		t.Errorf("helyos version in a modified checkout of %s:\n%s", rev, got)
	}
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// TestOutputShapes runs the binary every way a user may (--help and a bad
// flag for every command in the table, unknown commands, commands that
// fail for want of a daemon, and commands that work against a real one) and
// holds each line it prints to the output rules at the top of main.go.
func TestOutputShapes(t *testing.T) {
	t.Parallel()
	refused := []string{"--server", "http://127.0.0.1:1", "--token", "nxa-api_" + strings.Repeat("0", 64)}
	runs := [][]string{nil, {"bogus"}, {"--bogus"}, {"help", "bogus"}, {"--version"}, {"help"},
		{"auth", "bogus"}, {"auth", "token", "bogus"}, {"audit", "bogus"}, {"completion", "sh"},
		{"audit", "verify"}, {"logout"}, {"context", "use", "nope"}, {"daemon", "--tls", "maybe"},
		{"daemon", "--advertise-addr", "https://x/y"}, {"events", "--since", "-5m"}, {"whoami", "--json=maybe"},
		{"login"}, {"login", "ftp://x"}, {"login", zoneServer}, {"login", "x", "--token-stdin", "--token-env", "V"}, {"login", "x", "--ca-fingerprint", "ab"},
		{"login", "http://x", "--insecure-skip-tls-verify"}, {"login", "https://127.0.0.1:1", "--token-stdin"}, {"logout", "nope"},
		{"context"}, {"context", "bogus"}, {"context", "current"}, {"context", "rename", "a", "b c"}, {"context", "rm", "nope"},
		{"context", "set", "x"}, {"context", "set", "x", "--server", zoneServer}, {"context", "set", "x", "--token-env", "V", "--token-command", "c"},
		{"context", "set", "x", "--token", "nxa-api_" + strings.Repeat("0", 64)}}
	for _, path := range commandPaths(nil) {
		runs = append(runs, append(slices.Clone(path), "--help"), append(slices.Clone(path), "--bogus"), append(slices.Clone(path), "-x"))
	}
	for _, cmd := range [][]string{{"whoami"}, {"status"}, {"version"}, {"events"}, {"events", "--follow"},
		{"auth", "token", "ls"}, {"auth", "token", "create", "x"}, {"auth", "token", "rotate", "x"}, {"auth", "token", "revoke", "x"}} {
		runs = append(runs, append(slices.Clone(refused), cmd...))
	}
	home := t.TempDir()
	for _, args := range runs {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			t.Parallel()
			checkOutputShapes(t, args, runHelyos(t, home, "", nil, args...))
		})
	}
	t.Run("against a daemon", func(t *testing.T) {
		t.Parallel()
		home := t.TempDir()
		d := startDaemon(t, home, []string{"--tls", "on"})
		for _, args := range [][]string{{"whoami"}, {"status"}, {"version"}, {"context", "ls"},
			{"auth", "token", "create", "ci", "--ttl", "1h"}, {"auth", "token", "rotate", "ci", "--grace", "1m"},
			{"auth", "token", "ls"}, {"auth", "token", "revoke", "ci"}, {"--json", "whoami"}, {"events"},
			{"audit", "verify", "--data-dir", d.dataDir}, {"--server", "http://" + strings.TrimPrefix(d.url, "https://"), "whoami"}} {
			checkOutputShapes(t, args, runHelyos(t, home, "", nil, args...))
		}
		// login, logout and context in a HOME of their own, each success
		// then a failure
		home = t.TempDir()
		for _, args := range [][]string{{"login", d.url, "--token-stdin", "--ca-fingerprint", d.fp, "--name", "prod"},
			{"login", d.url, "--token-stdin", "--ca-fingerprint", strings.Repeat("0", 64)}, {"context", "current"}, {"logout"},
			{"logout", "nope"}, {"context", "set", "ci", "--server", d.url, "--token-env", "V"}, {"context", "set", "ci", "--server", "http://127.0.0.1:1"},
			{"context", "use", "ci"}, {"context", "rename", "ci", "ci2"}, {"context", "rename", "ci2", "prod"}, {"context", "rm", "ci2"}, {"context", "ls"}} {
			checkOutputShapes(t, args, runHelyos(t, home, d.token+"\n", nil, args...))
		}
		d.stop(t)
		checkOutputShapes(t, []string{"daemon"}, cliResult{stderr: d.out.String()})
	})
}

// commandPaths lists every command and subcommand below path, from the same
// table the dispatch and completion use.
func commandPaths(path []string) [][]string {
	var paths [][]string
	for _, sub := range subcommands(path) {
		p := append(slices.Clone(path), sub)
		paths = append(append(paths, p), commandPaths(p)...)
	}
	return paths
}

var (
	// doublePrefix is a prefix said twice, or "helyos"/a level said again
	// after one.
	doublePrefix = regexp.MustCompile(`\b(error|hint|warning): (helyos|error|hint|warning)\b`)
	// singleDash is a flag spelled -name in help.
	singleDash = regexp.MustCompile(`(?m)^\s+-[a-z]`)
	// capitalized is a message that starts as a sentence (an acronym, CA
	// or SIGHUP, may start one).
	capitalized = regexp.MustCompile(`^helyos: ([a-z]+: )?[A-Z][a-z]`)
)

// checkOutputShapes fails t for every line of r that breaks the output rules.
func checkOutputShapes(t *testing.T, args []string, r cliResult) {
	t.Helper()
	fail := func(format string, a ...any) {
		t.Helper()
		t.Errorf("helyos %q: "+format+"\nstdout:\n%s\nstderr:\n%s", append(append([]any{args}, a...), r.stdout, r.stderr)...)
	}
	all := r.stdout + r.stderr
	for _, bad := range []string{"flag provided but not defined", "Usage of", "flag needs an argument", "panic:", "error: error"} {
		if strings.Contains(all, bad) {
			fail("has the text %q", bad)
		}
	}
	if m := doublePrefix.FindString(all); m != "" {
		fail("says a prefix twice: %q", m)
	}
	if m := singleDash.FindString(all); m != "" {
		fail("spells a flag with one dash: %q", m)
	}
	seen := map[string]bool{}
	for _, line := range strings.Split(all, "\n") {
		if line = strings.TrimSpace(line); line != "" && seen[line] {
			fail("prints %q twice", line)
		}
		seen[line] = true
		parts := strings.Split(line, ": ") // after "helyos", a prefix said again
		for i := 1; i < len(parts)-1; i++ {
			if slices.ContainsFunc(parts[i+1:], func(q string) bool { return strings.HasPrefix(q+" ", parts[i]+" ") }) {
				fail("says %q twice in %q", parts[i], line)
			}
		}
	}
	help := len(args) > 0 && (isHelp(args[len(args)-1]) || args[0] == "help" && len(args) == 1)
	if help && (r.code != 0 || r.stderr != "" || r.stdout == "") {
		fail("help asked for is not on stdout alone, with exit 0 (exit %d)", r.code)
	}
	errors := strings.Count("\n"+r.stderr, "\nhelyos: error: ")
	if r.code != 0 && (errors != 1 || r.stdout != "") {
		fail("failed (exit %d) with %d error lines and %d bytes on stdout, want 1 and none", r.code, errors, len(r.stdout))
	}
	if r.code == 0 && errors != 0 {
		fail("succeeded but printed an error")
	}
	checkStderrLines(t, args, r.stderr, fail)
}

// checkStderrLines: every stderr line starts "helyos: ", after a time stamp
// in a daemon's log, but for a line to copy (indented, after a line ending
// in ':'), the usage that bare `helyos` prints, and the first-run token.
func checkStderrLines(t *testing.T, args []string, stderr string, fail func(string, ...any)) {
	t.Helper()
	if len(args) == 0 {
		var usageText strings.Builder
		usage(&usageText)
		stderr = strings.Replace(stderr, usageText.String(), "", 1)
	}
	prev := ""
	for _, line := range strings.Split(strings.TrimSuffix(stderr, "\n"), "\n") {
		msg := logStampRE.ReplaceAllString(line, "")
		switch {
		case line == "":
		case strings.HasPrefix(msg, "helyos: "):
			if capitalized.MatchString(msg) || strings.HasSuffix(msg, ".") {
				fail("line %q is not lower-case without a full stop", line)
			}
		case strings.HasPrefix(line, "  ") && strings.HasSuffix(prev, ":"):
		case args[0] == "daemon" && (strings.HasPrefix(line, "Generated new API token — ") || strings.HasPrefix(line, "HELYOS_API_TOKEN=")):
		default:
			fail("line %q does not start with \"helyos: \"", line)
		}
		prev = line
	}
}

// zoneServer is a server address with an IPv6 zone, which login and
// context set refuse with a hint of its own.
const zoneServer = "http://[fe80::1%25eth0]:1"

// TestReportKeepsEveryHint: a cause wrapped with %w keeps its own hint under
// an outer one (the IPv6-zone hint under login's, in the binary too), and a
// usage error anywhere on the chain still means exit 2.
func TestReportKeepsEveryHint(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"login", zoneServer}, {"context", "set", "x", "--server", zoneServer}} {
		wantFail(t, runHelyos(t, t.TempDir(), "", nil, args...), 2, "helyos: hint: use a routable address or a host name\n")
	}
	zone := withHint(fmt.Errorf(`server address "fe80::1%%eth0" has an IPv6 zone`), "use a routable address or a host name")
	for _, tc := range []struct {
		err  error
		code int
		want string
	}{
		{withHint(usageErrorf("login: %w", zone), "give a server like cluster.example.com"), 2,
			"helyos: error: login: server address \"fe80::1%eth0\" has an IPv6 zone\nhelyos: hint: give a server like cluster.example.com\nhelyos: hint: use a routable address or a host name\n"},
		{fmt.Errorf("save: %w", usageErrorf("bad")), 2, "helyos: error: save: bad\n"},
		{fmt.Errorf("dial: %w", zone), 1, "helyos: error: dial: server address \"fe80::1%eth0\" has an IPv6 zone\nhelyos: hint: use a routable address or a host name\n"},
	} {
		var out strings.Builder
		if code := report(tc.err, &out); code != tc.code || out.String() != tc.want {
			t.Errorf("report(%v) = %d\n%s\nwant %d\n%s", tc.err, code, out.String(), tc.code, tc.want)
		}
	}
}

// TestSecurityEnforcedIn holds SECURITY.md's "enforced in" column to the
// code: every file it names exists, and every function it names is declared
// in that file (a `type.method` as a method of that type, and the type in the
// package), so a refactor cannot leave an auditor looking for code that moved.
func TestSecurityEnforcedIn(t *testing.T) {
	var src strings.Builder
	files, _ := filepath.Glob("*.go") // a constant, valid pattern
	for _, name := range files {
		if !strings.HasSuffix(name, "_test.go") {
			src.Write(mustReadFile(t, name))
		}
	}
	ticked := regexp.MustCompile("`([^`]+)`")
	rows, width := 0, 0
	for _, line := range strings.Split(string(mustReadFile(t, "SECURITY.md")), "\n") {
		cells := strings.Split(strings.Trim(line, "| "), " | ")
		switch {
		case strings.HasSuffix(line, "| enforced in |"):
			width = len(cells)
			continue
		case width == 0 || strings.HasPrefix(line, "|---"):
			continue
		case !strings.HasPrefix(line, "|"):
			width = 0 // the table ended
			continue
		case len(cells) != width || !strings.HasPrefix(cells[width-1], "`"):
			t.Errorf("SECURITY.md: a promise without its \"enforced in\" cell: %s", line)
			continue
		}
		rows++
		for _, group := range strings.Split(cells[width-1], ";") {
			names := ticked.FindAllStringSubmatch(group, -1)
			if len(names) == 0 {
				t.Errorf("SECURITY.md: an \"enforced in\" cell names no file: %s", line)
				continue
			}
			file := names[0][1]
			data, err := os.ReadFile(file)
			if err != nil {
				t.Errorf("SECURITY.md names %s, which cannot be read: %v", file, err)
				continue
			}
			for _, n := range names[1:] {
				typ, fn, isMethod := strings.Cut(n[1], ".")
				decl := `(?m)^func ` + regexp.QuoteMeta(typ) + `\(`
				if isMethod {
					decl = `(?m)^func \(\w+ \*?` + regexp.QuoteMeta(typ) + `\) ` + regexp.QuoteMeta(fn) + `\(`
					if !regexp.MustCompile(`(?m)^type ` + regexp.QuoteMeta(typ) + ` `).MatchString(src.String()) {
						t.Errorf("SECURITY.md names %s in %s, but no type %s is declared", n[1], file, typ)
					}
				}
				if !regexp.MustCompile(decl).Match(data) {
					t.Errorf("SECURITY.md names %s in %s, which declares no such function", n[1], file)
				}
			}
		}
	}
	if rows == 0 {
		t.Fatal(`SECURITY.md has no promise table with an "enforced in" column`)
	}
}
