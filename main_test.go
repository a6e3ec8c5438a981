package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"debug/buildinfo"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

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
	exited  chan struct{}
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
	d := &testDaemon{home: home, dataDir: filepath.Join(home, ".helyos", "data"), out: &syncBuffer{}, exited: make(chan struct{})}
	all := append([]string{"daemon", "--port", "0"}, args...)
	d.cmd = exec.Command(helyosBin, all...)
	if len(via) > 0 {
		d.cmd = exec.Command(via[0], append(append(via[1:], helyosBin), all...)...)
	}
	if slices.Contains(env, journalStderr) {
		// As systemd does: $JOURNAL_STREAM names the stream that is stderr.
		d.cmd = exec.Command("/bin/sh", append([]string{"-c", `JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec "$0" "$@"`, helyosBin}, all...)...)
	}
	d.cmd.Env = testEnv(home, env...)
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start daemon: %v", err)
	}
	go func() { d.cmd.Wait(); close(d.exited) }()
	t.Cleanup(func() { d.stop(t) })
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if m := listeningRE.FindStringSubmatch(d.out.String()); m != nil {
			d.url, d.port = m[1]+"://127.0.0.1:"+m[2], m[2]
			break
		}
		select {
		case <-d.exited:
			t.Fatalf("daemon %v exited before listening:\n%s", args, d.out.String())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon %v did not listen within 2 minutes:\n%s", args, d.out.String())
		}
	}
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
	tr := &http.Transport{}
	if strings.HasPrefix(d.url, "https://") {
		tr.TLSClientConfig = &tls.Config{RootCAs: d.caPool(t)}
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 2 * time.Minute}
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
	cmd.Env = testEnv(home, env...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatalf("run helyos %v: %v", args, err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		cmd.Process.Kill()
		<-done
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
	cmd.Env = testEnv(home, env...)
	var stdout, stderr syncBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("run helyos daemon %v: %v", args, err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	for deadline := time.Now().Add(2 * time.Minute); ; {
		select {
		case <-exited:
			return cliResult{stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()}
		case <-time.After(10 * time.Millisecond):
		}
		if strings.Contains(stderr.String(), "listening on") || time.Now().After(deadline) {
			cmd.Process.Kill()
			<-exited
			t.Fatalf("helyos daemon %v did not refuse to start:\n%s", args, stderr.String())
		}
	}
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
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, f), data, 0o600)
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
