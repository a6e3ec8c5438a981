package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// Black-box tests of the client: the real binary against real daemons on
// loopback, each in its own temporary HOME. They only ever dial 127.0.0.1 or
// localhost.

// ---- pseudo-terminal ----

// ptyProc is the client running with a pseudo-terminal as its controlling
// terminal and all three standard streams; the test plays the person at the
// keyboard through the master side.
type ptyProc struct {
	master   *os.File
	out      syncBuffer
	cmd      *exec.Cmd
	exited   <-chan struct{}
	readDone chan struct{}
}

func ptyIoctl(f *os.File, req uintptr, arg unsafe.Pointer) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var errno syscall.Errno
	if err := rc.Control(func(fd uintptr) {
		_, _, errno = syscall.Syscall(syscall.SYS_IOCTL, fd, req, uintptr(arg))
	}); err != nil {
		return err
	}
	if errno != 0 {
		return errno
	}
	return nil
}

// startOnPty runs the client on a fresh pseudo-terminal (Linux ioctls).
func startOnPty(t *testing.T, home string, env []string, args ...string) *ptyProc {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		skipOrFailInCI(t, "no pseudo-terminals here: %v", err)
	}
	t.Cleanup(func() { master.Close() })
	unlock := int32(0)
	if err := ptyIoctl(master, 0x40045431, unsafe.Pointer(&unlock)); err != nil { // TIOCSPTLCK
		skipOrFailInCI(t, "unlock pty: %v", err)
	}
	var n uint32
	if err := ptyIoctl(master, 0x80045430, unsafe.Pointer(&n)); err != nil { // TIOCGPTN
		skipOrFailInCI(t, "pty number: %v", err)
	}
	slave, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		skipOrFailInCI(t, "open pty slave: %v", err)
	}
	p := &ptyProc{master: master, readDone: make(chan struct{})}
	p.cmd = exec.Command(helyosBin, args...)
	p.cmd.Stdin, p.cmd.Stdout, p.cmd.Stderr = slave, slave, slave
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	p.exited = startProc(t, p.cmd, home, env)
	slave.Close() // the child holds it now; the master reads EIO once it exits
	go func() { io.Copy(&p.out, master); close(p.readDone) }()
	return p
}

// waitFor polls the terminal output until it holds s.
func (p *ptyProc) waitFor(t *testing.T, s string) {
	t.Helper()
	pollUntil(t, fmt.Sprintf("the terminal showing %q", s), func() bool {
		closed := isClosed(p.readDone) // before the output is read: all of it is in by then
		if strings.Contains(p.out.String(), s) {
			return true
		}
		if closed {
			t.Fatalf("terminal closed without showing %q:\n%s", s, p.out.String())
		}
		return false
	}, &p.out)
}

// typeLine types s and Enter.
func (p *ptyProc) typeLine(t *testing.T, s string) {
	t.Helper()
	if _, err := p.master.Write([]byte(s + "\n")); err != nil {
		t.Fatalf("type on the terminal: %v", err)
	}
}

// wait returns the exit code and everything the terminal showed.
func (p *ptyProc) wait(t *testing.T) (int, string) {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(2 * time.Minute):
		t.Fatalf("helyos on the pty did not finish within 2 minutes:\n%s", p.out.String())
	}
	select {
	case <-p.readDone:
	case <-time.After(time.Minute):
		t.Fatalf("pty output did not end:\n%s", p.out.String())
	}
	return p.cmd.ProcessState.ExitCode(), p.out.String()
}

// ---- tests ----

// TestCLIFirstStartWhoami: the daemon's first start writes the "local"
// context, so whoami in the same HOME works with no set-up, over HTTP and
// over HTTPS with the CA pinned.
func TestCLIFirstStartWhoami(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, tls string
		args      []string
	}{
		{"http", "http", nil},
		{"https", "pinned", []string{"--tls", "on"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			home := t.TempDir()
			startDaemon(t, home, tc.args)
			r := mustRun(t, home, nil, "whoami")
			for _, w := range []string{"name:", "bootstrap", "scope:", "admin", "expires:", "never", "last used:"} {
				if !strings.Contains(r.stdout, w) {
					t.Errorf("whoami output lacks %q:\n%s", w, r.stdout)
				}
			}
			if r.stderr != "" {
				t.Errorf("whoami wrote to stderr: %s", r.stderr)
			}
			var views []contextView
			decodeOutput(t, mustRun(t, home, nil, "context", "ls", "--json"), &views)
			if len(views) != 1 || views[0].Name != "local" || !views[0].Active || views[0].TLS != tc.tls || views[0].Project != "default" {
				t.Errorf("contexts after first start = %+v", views)
			}
		})
	}
}

// TestCLILoginFingerprint: every accepted spelling of the fingerprint, and
// --ca-file alone or with a matching fingerprint, pins the daemon's CA;
// the server address is normalised.
func TestCLILoginFingerprint(t *testing.T) {
	t.Parallel()
	d := tlsDaemon(t)
	caFile := filepath.Join(d.dataDir, caCertFile)
	bare := strings.ReplaceAll(d.fp, ":", "")
	for _, tc := range []struct {
		name   string
		server string
		flags  []string
		stdin  string
		env    []string
	}{
		{"colons lower-case", d.url, []string{"--ca-fingerprint", d.fp}, "", nil},
		{"colons upper-case", d.url, []string{"--ca-fingerprint", strings.ToUpper(d.fp)}, "", nil},
		{"no colons", d.url, []string{"--ca-fingerprint", bare}, "", nil},
		{"no colons upper-case", d.url, []string{"--ca-fingerprint", strings.ToUpper(bare)}, "", nil},
		{"spaces", d.url, []string{"--ca-fingerprint", strings.ReplaceAll(d.fp, ":", " ")}, "", nil},
		{"sha256 prefix", d.url, []string{"--ca-fingerprint", "sha256:" + d.fp}, "", nil},
		{"SHA256 prefix upper-case", d.url, []string{"--ca-fingerprint", "SHA256:" + strings.ToUpper(bare)}, "", nil},
		{"surrounding blanks", d.url, []string{"--ca-fingerprint", "  " + d.fp + "\t"}, "", nil},
		{"flag=value", d.url, []string{"--ca-fingerprint=" + d.fp}, "", nil},
		{"no scheme gets https", "127.0.0.1:" + d.port, []string{"--ca-fingerprint", d.fp}, "", nil},
		{"trailing slash", d.url + "/", []string{"--ca-fingerprint", d.fp}, "", nil},
		{"ca-file", d.url, []string{"--ca-file", caFile}, "", nil},
		{"ca-file with matching fingerprint", d.url, []string{"--ca-file", caFile, "--ca-fingerprint", strings.ToUpper(bare)}, "", nil},
		{"token from stdin", d.url, []string{"--ca-fingerprint", d.fp, "--token-stdin"}, d.token + "\n", nil},
		{"token from $HELYOS_API_TOKEN", d.url, []string{"--ca-fingerprint", d.fp}, "", []string{"HELYOS_API_TOKEN=" + d.token}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			home := t.TempDir()
			args := append([]string{"login", tc.server}, tc.flags...)
			if tc.stdin == "" && tc.env == nil {
				args = append(args, "--token", d.token)
			}
			r := runHelyos(t, home, tc.stdin, tc.env, args...)
			if r.code != 0 {
				t.Fatalf("helyos %v: exit %d\n%s", args, r.code, r.stderr)
			}
			if !strings.Contains(r.stderr, `saved as context "127-0-0-1"`) {
				t.Errorf("login did not report the context:\n%s", r.stderr)
			}
			cfg := readCLIConfig(t, home)
			c := cfg.Context("127-0-0-1")
			if cfg.CurrentContext != "127-0-0-1" || c == nil || len(cfg.Contexts) != 1 {
				t.Fatalf("config after login: current %q, contexts %v", cfg.CurrentContext, cfg.Names())
			}
			if c.Server != d.url || c.Token != d.token || c.TokenName != "bootstrap" || c.CASHA256 != d.fp || c.Insecure {
				t.Errorf("context = %+v", c)
			}
			ca, err := c.decodeCA()
			if err != nil {
				t.Fatal(err)
			}
			want, _ := os.ReadFile(caFile)
			if !bytes.Equal(bytes.TrimSpace(pemEncode(ca)), bytes.TrimSpace(want)) {
				t.Errorf("pinned CA is not the daemon's CA")
			}
			if got := whoamiName(t, home, nil); got != "bootstrap" {
				t.Errorf("whoami after login = %q", got)
			}
		})
	}
}

// TestCLILoginOnTerminal answers the trust prompt on a real pseudo-terminal
// with yes and with no, and types the token at a prompt that must not echo.
func TestCLILoginOnTerminal(t *testing.T) {
	t.Parallel()
	d := tlsDaemon(t)
	secret := strings.TrimPrefix(d.token, "nxa-api_")

	t.Run("yes, token typed", func(t *testing.T) {
		t.Parallel()
		home := t.TempDir()
		p := startOnPty(t, home, nil, "login", d.url)
		p.waitFor(t, "Trust and pin this CA? [y/N]")
		if !strings.Contains(p.out.String(), "SHA-256: "+d.fp) {
			t.Errorf("prompt does not show the fingerprint:\n%s", p.out.String())
		}
		p.typeLine(t, "y")
		p.waitFor(t, "API token: ")
		p.typeLine(t, d.token)
		code, out := p.wait(t)
		if code != 0 {
			t.Fatalf("login exit %d:\n%s", code, out)
		}
		if strings.Contains(out, secret) {
			t.Errorf("the token was echoed on the terminal:\n%s", out)
		}
		if c := mustContext(t, home, "127-0-0-1"); c.CASHA256 != d.fp || c.Token != d.token {
			t.Errorf("context = %+v", c)
		}
	})

	t.Run("no", func(t *testing.T) {
		t.Parallel()
		home := t.TempDir()
		p := startOnPty(t, home, nil, "login", d.url, "--token", d.token)
		p.waitFor(t, "Trust and pin this CA? [y/N]")
		if !strings.Contains(p.out.String(), "SHA-256: "+d.fp) {
			t.Errorf("prompt does not show the fingerprint:\n%s", p.out.String())
		}
		p.typeLine(t, "n")
		code, out := p.wait(t)
		if code != 1 || !strings.Contains(out, "the CA was not trusted; nothing was saved") {
			t.Fatalf("login exit %d, want 1 and a refusal:\n%s", code, out)
		}
		if _, err := os.Stat(filepath.Dir(cliConfigPath(home))); !os.IsNotExist(err) {
			t.Errorf("a refused login wrote %v", filesUnder(t, home))
		}
	})

	// --token-stdin at a terminal (the line auth token create prints, pasted
	// there) asks the same way: the pasted token is not echoed.
	for _, flags := range [][]string{{"--ca-fingerprint", d.fp}, {"--ca-fingerprint", d.fp, "--token-stdin"}} {
		t.Run("token prompt does not echo "+strings.Join(flags[2:], ""), func(t *testing.T) {
			t.Parallel()
			home := t.TempDir()
			p := startOnPty(t, home, nil, append([]string{"login", d.url}, flags...)...)
			p.waitFor(t, "API token: ")
			p.typeLine(t, d.token)
			code, out := p.wait(t)
			if code != 0 {
				t.Fatalf("login exit %d:\n%s", code, out)
			}
			if strings.Contains(out, secret) || strings.Contains(out, secret[:16]) {
				t.Errorf("the token was echoed on the terminal:\n%s", out)
			}
			if strings.Contains(out, "Trust and pin") {
				t.Errorf("asked to trust a CA the fingerprint already vouched for:\n%s", out)
			}
			if got := whoamiName(t, home, nil); got != "bootstrap" {
				t.Errorf("whoami = %q", got)
			}
		})
	}
}

// TestCLILoginRefusals: each refusal exits non-zero, says why, and saves
// nothing: no config appears in a fresh HOME, and an existing one keeps
// its bytes and gets no backup.
func TestCLILoginRefusals(t *testing.T) {
	t.Parallel()
	d := tlsDaemon(t)
	garbage := filepath.Join(t.TempDir(), "garbage.pem")
	os.WriteFile(garbage, []byte("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"), 0o600)
	notPEM := filepath.Join(t.TempDir(), "not.pem")
	os.WriteFile(notPEM, []byte("hello\n"), 0o600)
	caFile := filepath.Join(d.dataDir, caCertFile)
	otherFP := strings.TrimSuffix(strings.Repeat("00:", 32), ":")
	badToken := "nxa-api_" + strings.Repeat("0", 64)
	const existing = "# mine\ncurrent-context = \"other\"\n\n[context.other]\nserver = \"https://other.invalid:6443\"\ntoken = \"nxa-api_other\"\n"

	for _, tc := range []struct {
		name  string
		args  []string
		code  int
		wants []string
	}{
		{"no fingerprint off a terminal", []string{"--token", d.token}, 1,
			[]string{"not a terminal", d.fp, "--ca-fingerprint " + d.fp, "--ca-file"}},
		{"wrong fingerprint", []string{"--token", d.token, "--ca-fingerprint", otherFP}, 1,
			[]string{"has fingerprint " + d.fp, otherFP, "man-in-the-middle", "nothing was saved", "openssl x509 -noout -fingerprint -sha256 -in DATA_DIR/ca.pem"}},
		{"bad token", []string{"--token", badToken, "--ca-fingerprint", d.fp}, 1,
			[]string{"nothing was saved", "refused", "missing or invalid bearer token"}},
		{"no token off a terminal", []string{"--ca-fingerprint", d.fp}, 1,
			[]string{"no API token given", "--token-stdin"}},
		{"garbage ca-file", []string{"--token", d.token, "--ca-file", garbage}, 1,
			[]string{"--ca-file " + garbage, "parse certificate"}},
		{"ca-file not PEM", []string{"--token", d.token, "--ca-file", notPEM}, 1,
			[]string{"not a PEM certificate"}},
		{"ca-file missing", []string{"--token", d.token, "--ca-file", filepath.Join(t.TempDir(), "nope.pem")}, 1,
			[]string{"read --ca-file", "no such file"}},
		{"ca-file with another fingerprint", []string{"--token", d.token, "--ca-file", caFile, "--ca-fingerprint", otherFP}, 1,
			[]string{"has fingerprint " + d.fp, "not the " + otherFP}},
		{"malformed fingerprint", []string{"--token", d.token, "--ca-fingerprint", "abc"}, 2,
			[]string{"not a SHA-256 fingerprint"}},
		{"insecure with fingerprint", []string{"--token", d.token, "--insecure-skip-tls-verify", "--ca-fingerprint", d.fp}, 2,
			[]string{"cannot be combined"}},
		{"two token sources", []string{"--token", d.token, "--token-stdin", "--ca-fingerprint", d.fp}, 2,
			[]string{"one way only"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			fresh := t.TempDir()
			r := runHelyos(t, fresh, "", nil, append([]string{"login", d.url}, tc.args...)...)
			wantFail(t, r, tc.code, tc.wants...)
			noTokenIn(t, r, d.token, badToken)
			if files := filesUnder(t, fresh); len(files) != 0 {
				t.Errorf("a refused login in a fresh HOME wrote %v", files)
			}

			home := t.TempDir()
			path := cliConfigPath(home)
			os.MkdirAll(filepath.Dir(path), 0o700)
			os.WriteFile(path, []byte(existing), 0o600)
			wantFail(t, runHelyos(t, home, "", nil, append([]string{"login", d.url}, tc.args...)...), tc.code)
			if got, _ := os.ReadFile(path); string(got) != existing {
				t.Errorf("a refused login changed the config:\n%s", got)
			}
			if _, err := os.Stat(path + ".bak"); !os.IsNotExist(err) {
				t.Errorf("a refused login wrote a backup")
			}
		})
	}
}

// TestCLICertificateRefusals: a context pinned to daemon A refuses daemon
// B's certificate, and a context with no pin (system trust) refuses the
// self-signed daemon; both say it is a certificate problem and point at
// helyos login.
func TestCLICertificateRefusals(t *testing.T) {
	t.Parallel()
	a, b := tlsDaemon(t), tlsDaemon(t)
	home := t.TempDir()
	mustRun(t, home, nil, "login", a.url, "--ca-fingerprint", a.fp, "--token", a.token, "--name", "pinned")
	mustRun(t, home, nil, "context", "set", "system", "--server", a.url) // created here: system trust
	// "moved" keeps A's pin after its server is pointed at B.
	mustRun(t, home, nil, "login", a.url, "--ca-fingerprint", a.fp, "--token", a.token, "--name", "moved")
	mustRun(t, home, nil, "context", "set", "moved", "--server", b.url)
	if c := mustContext(t, home, "moved"); c.CASHA256 != a.fp || c.Server != b.url {
		t.Fatalf("context moved = %+v", c)
	}
	if c := mustContext(t, home, "system"); c.CA != "" {
		t.Fatalf("context set pinned a CA: %+v", c)
	}
	mustRun(t, home, nil, "login", b.url, "--insecure-skip-tls-verify", "--token", b.token, "--name", "insec", "--no-set-current")
	if c := mustContext(t, home, "insec"); !c.Insecure || c.CA != "" {
		t.Fatalf("context insec = %+v", c)
	}
	if got := whoamiName(t, home, nil, "--context", "insec"); got != "bootstrap" {
		t.Errorf("whoami through an insecure context = %q", got)
	}

	for _, tc := range []struct {
		name  string
		args  []string
		wants []string
	}{
		{"pinned to A, dialling B", []string{"--context", "moved", "whoami"},
			[]string{"certificate problem talking to " + b.url, "(pinned trust)", "helyos: hint:", "helyos login " + b.url + " --name moved --ca-fingerprint FP\n"}},
		{"system trust, self-signed daemon", []string{"--context", "system", "whoami", "--token", a.token},
			[]string{"certificate problem talking to " + a.url, "(system trust)", "helyos login " + a.url + " --name system (add --ca-file PEM"}},
		{"--server elsewhere drops the pin", []string{"--context", "pinned", "--server", b.url, "--token", b.token, "whoami"},
			[]string{"certificate problem talking to " + b.url, "(system trust)", "helyos login " + b.url + " (add --ca-file PEM"}},
		{"--server elsewhere drops insecure", []string{"--context", "insec", "--server", a.url, "--token", a.token, "whoami"},
			[]string{"certificate problem talking to " + a.url, "(system trust)"}},
	} {
		t.Run(tc.name, func(t *testing.T) { // not parallel: the hint is followed below
			r := runHelyos(t, home, "", nil, tc.args...)
			wantFail(t, r, 1, tc.wants...)
			noTokenIn(t, r, a.token, b.token)
		})
	}
	// The pin still works against its own daemon.
	if got := whoamiName(t, home, nil, "--context", "pinned"); got != "bootstrap" {
		t.Errorf("whoami through the pin = %q", got)
	}
	// Following the hint re-pins "moved" (a login without the fingerprint
	// would keep A's pin and fail again).
	wantFail(t, runHelyos(t, home, b.token+"\n", nil, "login", b.url, "--name", "moved", "--token-stdin"), 1, "helyos login "+b.url+" --name moved --ca-fingerprint FP\n")
	mustRun(t, home, nil, "login", b.url, "--name", "moved", "--ca-fingerprint", b.fp, "--token", b.token)
	if got := whoamiName(t, home, nil, "--context", "moved"); got != "bootstrap" {
		t.Errorf("whoami after following the re-pin hint = %q", got)
	}
}

// TestCLIContextCommands walks every context subcommand, text and JSON,
// and the errors for unknown names.
func TestCLIContextCommands(t *testing.T) {
	t.Parallel()
	d := httpDaemon(t)
	home := t.TempDir()
	ls := func() []contextView {
		t.Helper()
		var v []contextView
		decodeOutput(t, mustRun(t, home, nil, "context", "ls", "--json"), &v)
		return v
	}

	if v := ls(); len(v) != 0 {
		t.Fatalf("fresh HOME has contexts %+v", v)
	}
	if r := mustRun(t, home, nil, "context", "ls", "--json"); strings.TrimSpace(r.stdout) != "[]" {
		t.Errorf("empty ls --json = %q, want []", r.stdout)
	}
	wantFail(t, runHelyos(t, home, "", nil, "context", "current"), 1, "there are no contexts", "helyos login")

	mustRun(t, home, nil, "login", d.url, "--token", d.token, "--name", "a", "--project", "pa")
	r := mustRun(t, home, nil, "context", "set", "b", "--server", "b.invalid", "--project", "pb")
	if !strings.Contains(r.stderr, `created context "b"`) {
		t.Errorf("context set said %q", r.stderr)
	}
	want := []contextView{
		{Name: "a", Server: d.url, Project: "pa", TLS: "http", TokenSource: "token", Active: true},
		{Name: "b", Server: "https://b.invalid:6443", Project: "pb", TLS: "system", TokenSource: "-"},
	}
	if got := ls(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("context ls --json =\n%+v\nwant\n%+v", got, want)
	}
	text := mustRun(t, home, nil, "context", "list").stdout
	lines := strings.Split(strings.TrimSpace(text), "\n")
	if len(lines) != 3 || !regexp.MustCompile(`^CURRENT\s+NAME\s+SERVER\s+PROJECT\s+TLS\s+TOKEN$`).MatchString(lines[0]) ||
		!regexp.MustCompile(`^\*\s+a\s+`+regexp.QuoteMeta(d.url)+`\s+pa\s+http\s+token$`).MatchString(lines[1]) ||
		!regexp.MustCompile(`^\s+b\s+https://b\.invalid:6443\s+pb\s+system\s+-$`).MatchString(lines[2]) {
		t.Errorf("context list:\n%s", text)
	}
	if strings.Contains(text, d.token) {
		t.Errorf("context ls shows the token")
	}

	if got := mustRun(t, home, nil, "context", "current").stdout; got != "a\n" {
		t.Errorf("context current = %q", got)
	}
	var cur contextView
	decodeOutput(t, mustRun(t, home, nil, "context", "current", "--json"), &cur)
	if cur != want[0] {
		t.Errorf("context current --json = %+v", cur)
	}

	mustRun(t, home, nil, "context", "use", "b")
	if got := mustRun(t, home, nil, "context", "current").stdout; got != "b\n" {
		t.Errorf("after use b: current = %q", got)
	}
	wantFail(t, runHelyos(t, home, "", nil, "context", "use", "nope"), 1, `context "nope" does not exist`, "helyos context ls")

	mustRun(t, home, nil, "context", "rename", "b", "c")
	if cfg := readCLIConfig(t, home); cfg.CurrentContext != "c" || cfg.Context("b") != nil || cfg.Context("c") == nil {
		t.Errorf("after rename: current %q, contexts %v", cfg.CurrentContext, cfg.Names())
	}
	wantFail(t, runHelyos(t, home, "", nil, "context", "rename", "c", "a"), 1, `context "a" already exists`)
	wantFail(t, runHelyos(t, home, "", nil, "context", "rename", "nope", "x"), 1, `context "nope" does not exist`)
	wantFail(t, runHelyos(t, home, "", nil, "context", "rename", "c", "bad name"), 2, `context name "bad name" is invalid`)

	mustRun(t, home, nil, "context", "set", "c", "--project", "pc2")
	if c := mustContext(t, home, "c"); c.Project != "pc2" || c.Server != "https://b.invalid:6443" {
		t.Errorf("after set --project: %+v", c)
	}
	mustRun(t, home, nil, "context", "set", "a", "--server", d.url+"/") // same server, normalised
	wantFail(t, runHelyos(t, home, "", nil, "context", "set", "nope", "--project", "x"), 1, `context "nope" does not exist`, "--server")
	wantFail(t, runHelyos(t, home, "", nil, "context", "set", "a", "--server", "ftp://x"), 2, "scheme must be https or http")
	wantFail(t, runHelyos(t, home, "", nil, "context", "set", "a", "--token", d.token), 2, "--token cannot be saved without a check")

	mustRun(t, home, nil, "context", "rm", "c")
	cfg := readCLIConfig(t, home)
	if cfg.CurrentContext != "" || cfg.Names()[0] != "a" || len(cfg.Contexts) != 1 {
		t.Errorf("after rm: current %q, contexts %v", cfg.CurrentContext, cfg.Names())
	}
	// One context left and none current: that one is active.
	if got := mustRun(t, home, nil, "context", "current").stdout; got != "a\n" {
		t.Errorf("single context not active: current = %q", got)
	}
	if got := whoamiName(t, home, nil); got != "bootstrap" {
		t.Errorf("whoami through the only context = %q", got)
	}
	wantFail(t, runHelyos(t, home, "", nil, "context", "rm", "nope"), 1, `context "nope" does not exist`)
	wantFail(t, runHelyos(t, home, "", nil, "context"), 2, "give a subcommand")
	wantFail(t, runHelyos(t, home, "", nil, "context", "bogus"), 2, `context: unknown subcommand "bogus"; use ls, use,`)
	wantFail(t, runHelyos(t, home, "", nil, "context", "use"), 2, "wrong number of arguments")
}

// TestCLIContextListEscapes: a hand-edited name or value holding control
// characters is shown escaped, so it can neither drive the terminal nor fake
// a row of the listing.
func TestCLIContextListEscapes(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	writeConfig(t, home, `[context."x\u001B[2J"]`+"\n"+`server = "https://h:6443\r"`+"\n"+`project = "p\n*\tfake"`+"\n"+`token-env = "E\u0007"`+"\n")
	ls := mustRun(t, home, nil, "context", "ls").stdout
	if lines := strings.Split(strings.TrimSpace(ls), "\n"); len(lines) != 2 || strings.ContainsAny(ls, "\x1b\r\a\t") ||
		!strings.Contains(lines[1], `x\u001b[2J`) || !strings.Contains(lines[1], `p\u000a*\u0009fake`) {
		t.Errorf("context ls:\n%q", ls)
	}
	if got := mustRun(t, home, nil, "context", "current").stdout; got != `x\u001b[2J`+"\n" {
		t.Errorf("context current = %q", got)
	}
}

// TestCLIResolution: server, token and context precedence, and global flags
// before or after the command.
func TestCLIResolution(t *testing.T) {
	t.Parallel()
	a, b := httpDaemon(t), httpDaemon(t)
	tok := map[string]string{}
	for _, n := range []string{"a-ctx", "a-flag", "a-env"} {
		tok[n] = a.createToken(t, a.token, n, 0)
	}
	for _, n := range []string{"b-ctx", "b-flag", "b-env"} {
		tok[n] = b.createToken(t, b.token, n, 0)
	}
	home := t.TempDir()
	mustRun(t, home, nil, "login", a.url, "--token", tok["a-ctx"], "--name", "ca")
	mustRun(t, home, nil, "login", b.url, "--token", tok["b-ctx"], "--name", "cb")

	type status struct {
		Server, Context, Auth string
		Whoami                *struct{ Name string }
	}
	for _, tc := range []struct {
		name                   string
		env, args              []string
		server, context, whoIs string // whoIs "": no token was sent
	}{
		{"context alone", nil, nil, b.url, "cb", "b-ctx"},
		{"--server beats $HELYOS_SERVER and context", []string{"HELYOS_SERVER=" + b.url}, []string{"--server", a.url, "--token", tok["a-flag"]}, a.url, "", "a-flag"},
		{"$HELYOS_SERVER beats context", []string{"HELYOS_SERVER=" + a.url, "HELYOS_API_TOKEN=" + tok["a-env"]}, nil, a.url, "", "a-env"},
		{"another server drops the context's token", nil, []string{"--server", a.url}, a.url, "", ""},
		{"--server naming the context's own server keeps it", nil, []string{"--server", b.url + "/"}, b.url, "cb", "b-ctx"},
		{"--token beats $HELYOS_API_TOKEN and context", []string{"HELYOS_API_TOKEN=" + tok["b-env"]}, []string{"--token", tok["b-flag"]}, b.url, "cb", "b-flag"},
		{"$HELYOS_API_TOKEN beats context", []string{"HELYOS_API_TOKEN=" + tok["b-env"]}, nil, b.url, "cb", "b-env"},
		{"$HELYOS_CONTEXT beats current-context", []string{"HELYOS_CONTEXT=ca"}, nil, a.url, "ca", "a-ctx"},
		{"--context beats $HELYOS_CONTEXT", []string{"HELYOS_CONTEXT=ca"}, []string{"--context", "cb"}, b.url, "cb", "b-ctx"},
		{"--context with $HELYOS_API_TOKEN", []string{"HELYOS_API_TOKEN=" + tok["a-env"]}, []string{"--context", "ca"}, a.url, "ca", "a-env"},
		{"global flags after the command", nil, []string{"status", "--json", "--context", "ca"}, a.url, "ca", "a-ctx"},
		{"global flags with =", nil, []string{"status", "--context=ca", "--json=true"}, a.url, "ca", "a-ctx"},
		{"--json before the command", nil, []string{"--json", "--context", "ca", "status"}, a.url, "ca", "a-ctx"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			args := tc.args
			if !strings.Contains(strings.Join(args, " "), "status") {
				args = append(append([]string{}, args...), "status", "--json")
			}
			r := runHelyos(t, home, "", tc.env, args...)
			if r.code != 0 {
				t.Fatalf("helyos %v: exit %d\n%s", args, r.code, r.stderr)
			}
			var st status
			decodeOutput(t, r, &st)
			got := ""
			if st.Whoami != nil {
				got = st.Whoami.Name
			}
			if st.Server != tc.server || st.Context != tc.context || got != tc.whoIs {
				t.Errorf("server %s, context %q, token %q; want %s, %q, %q (auth %s)", st.Server, st.Context, got, tc.server, tc.context, tc.whoIs, st.Auth)
			}
			if tc.whoIs == "" && st.Auth != "no token" {
				t.Errorf("auth = %q, want no token", st.Auth)
			}
			if strings.Contains(r.stderr, "warning") {
				t.Errorf("loopback HTTP gave a warning: %s", r.stderr)
			}
		})
	}

	for _, tc := range []struct {
		name      string
		env, args []string
		wants     []string
	}{
		{"unknown --context", []string{"HELYOS_CONTEXT=ca"}, []string{"--context", "nope", "whoami"}, []string{`context "nope" (from --context) does not exist`}},
		{"unknown $HELYOS_CONTEXT", []string{"HELYOS_CONTEXT=nope"}, []string{"whoami"}, []string{`context "nope" (from $HELYOS_CONTEXT) does not exist`}},
		{"--context needs a value", nil, []string{"whoami", "--context"}, []string{"flag --context needs a value"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			code := 1
			if strings.Contains(tc.name, "needs a value") {
				code = 2
			}
			wantFail(t, runHelyos(t, home, "", tc.env, tc.args...), code, tc.wants...)
		})
	}

	t.Run("several contexts, none current", func(t *testing.T) {
		t.Parallel()
		other := t.TempDir()
		mustRun(t, other, nil, "login", a.url, "--token", tok["a-ctx"], "--name", "ca", "--no-set-current")
		mustRun(t, other, nil, "login", b.url, "--token", tok["b-ctx"], "--name", "cb", "--no-set-current")
		if cfg := readCLIConfig(t, other); cfg.CurrentContext != "" {
			t.Fatalf("--no-set-current set %q", cfg.CurrentContext)
		}
		wantFail(t, runHelyos(t, other, "", nil, "whoami"), 1, "several contexts exist and none is current: ca, cb", "helyos context use")
		// Server and token both given: no context is needed.
		if got := whoamiName(t, other, nil, "--server", a.url, "--token", tok["a-flag"]); got != "a-flag" {
			t.Errorf("whoami = %q", got)
		}
	})

	t.Run("built-in default server", func(t *testing.T) {
		t.Parallel()
		// Dials localhost:6443; whatever answers, the address is named.
		r := runHelyos(t, t.TempDir(), "", nil, "status")
		if !strings.Contains(r.stdout+r.stderr, "http://localhost:6443") {
			t.Errorf("status with no config does not name http://localhost:6443:\n%s%s", r.stdout, r.stderr)
		}
	})
}

// TestCLILoginContextNames: derived names get -2, -3 when another server
// holds the name; logging in again to a server a context pins reuses that
// context and pin without a prompt; --name, --project, --no-set-current.
func TestCLILoginContextNames(t *testing.T) {
	t.Parallel()
	a, b, c := tlsDaemon(t), tlsDaemon(t), tlsDaemon(t)
	home := t.TempDir()
	mustRun(t, home, nil, "login", a.url, "--ca-fingerprint", a.fp, "--token", a.token)
	mustRun(t, home, nil, "login", b.url, "--ca-fingerprint", b.fp, "--token", b.token)
	mustRun(t, home, nil, "login", c.url, "--ca-fingerprint", c.fp, "--token", c.token, "--no-set-current")
	cfg := readCLIConfig(t, home)
	if got := strings.Join(cfg.Names(), ","); got != "127-0-0-1,127-0-0-1-2,127-0-0-1-3" {
		t.Fatalf("derived names = %s", got)
	}
	if cfg.CurrentContext != "127-0-0-1-2" {
		t.Errorf("current after --no-set-current = %q", cfg.CurrentContext)
	}
	for name, d := range map[string]*testDaemon{"127-0-0-1": a, "127-0-0-1-2": b, "127-0-0-1-3": c} {
		if ctx := cfg.Context(name); ctx.Server != d.url || ctx.CASHA256 != d.fp {
			t.Errorf("context %s = %+v", name, ctx)
		}
	}

	// Logging in again to B, with a new token and no fingerprint, off a
	// terminal: the pin of 127-0-0-1-2 is reused, nothing is added.
	before := mustContext(t, home, "127-0-0-1-2")
	newTok := b.createToken(t, b.token, "again", 0)
	r := mustRun(t, home, nil, "login", "127.0.0.1:"+b.port, "--token", newTok, "--project", "web")
	if strings.Contains(r.stderr, "Trust") || !strings.Contains(r.stderr, `saved as context "127-0-0-1-2"`) {
		t.Errorf("re-login:\n%s", r.stderr)
	}
	cfg = readCLIConfig(t, home)
	after := cfg.Context("127-0-0-1-2")
	if len(cfg.Contexts) != 3 || after.CA != before.CA || after.CASHA256 != b.fp || after.Token != newTok || after.TokenName != "again" || after.Project != "web" {
		t.Errorf("after re-login: %v, %+v", cfg.Names(), after)
	}

	// --name for a new context, with --project and --no-set-current.
	mustRun(t, home, nil, "login", a.url, "--ca-fingerprint", a.fp, "--token", a.token, "--name", "prod", "--project", "shop", "--no-set-current")
	cfg = readCLIConfig(t, home)
	if p := cfg.Context("prod"); p == nil || p.Server != a.url || p.Project != "shop" || p.CASHA256 != a.fp || cfg.CurrentContext != "127-0-0-1-2" {
		t.Fatalf("--name prod: current %q, %+v", cfg.CurrentContext, p)
	}
	// --name of a context for the same server: reused with its pin, no prompt.
	r = mustRun(t, home, nil, "login", a.url, "--token", a.token, "--name", "prod")
	if p := mustContext(t, home, "prod"); p.Project != "shop" || p.CASHA256 != a.fp || strings.Contains(r.stderr, "Trust") {
		t.Errorf("--name prod again: %+v\n%s", p, r.stderr)
	}
	// --name of a context for another server: refused, nothing saved, as
	// LXD refuses a remote that exists.
	saved := string(mustReadFile(t, cliConfigPath(home)))
	wantFail(t, runHelyos(t, home, "", nil, "login", c.url, "--ca-fingerprint", c.fp, "--token", c.token, "--name", "prod"), 1,
		`helyos: error: context "prod" already exists for `+a.url+"; nothing was saved\n",
		"helyos: hint: pick another --name, or remove it first with 'helyos context rm prod'\n")
	if after := string(mustReadFile(t, cliConfigPath(home))); after != saved {
		t.Errorf("a refused login changed the config:\n%s", after)
	}
	// Following the hint.
	mustRun(t, home, nil, "context", "rm", "prod")
	mustRun(t, home, nil, "login", c.url, "--ca-fingerprint", c.fp, "--token", c.token, "--name", "prod")
	if p := mustContext(t, home, "prod"); p.Server != c.url || p.CASHA256 != c.fp || p.Project != "" {
		t.Errorf("prod after rm and login: %+v", p)
	}
	wantFail(t, runHelyos(t, home, "", nil, "login", a.url, "--token", a.token, "--name", "-bad"), 2, "is invalid")
}

// TestCLILogoutAndSinglePasteLogin: the line `auth token create` prints,
// with the address the daemon advertises, logs in from a second HOME with
// the token on stdin and no prompt; the secret is printed once, on stdout
// only; logout drops only the token; logging in again reuses the pin.
func TestCLILogoutAndSinglePasteLogin(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, t.TempDir(), []string{"--host", "127.0.0.1", "--tls", "on", "--advertise-addr", "localhost"})
	r := mustRun(t, d.home, nil, "auth", "token", "create", "laptop")
	secret := strings.TrimSpace(r.stdout)
	m := regexp.MustCompile(`(?m)^  helyos (login \S+ --ca-fingerprint \S+ --token-stdin)$`).FindStringSubmatch(r.stderr)
	if m == nil || !strings.HasPrefix(m[1], "login https://localhost:"+d.port+" --ca-fingerprint "+d.fp) {
		t.Fatalf("no paste-able login line for the advertised address:\n%s", r.stderr)
	}
	noTokenIn(t, cliResult{stderr: r.stderr}, secret)
	paste := strings.Fields(m[1])

	laptop := t.TempDir()
	r = runHelyos(t, laptop, secret+"\n", nil, paste...)
	if r.code != 0 || strings.Contains(r.stderr, "Trust") {
		t.Fatalf("pasted login: exit %d\n%s", r.code, r.stderr)
	}
	if got := whoamiName(t, laptop, nil); got != "laptop" {
		t.Fatalf("whoami after pasted login = %q", got)
	}
	before := mustContext(t, laptop, "localhost")

	r = mustRun(t, laptop, nil, "logout")
	if !strings.Contains(r.stderr, `logged out of context "localhost"`) {
		t.Errorf("logout said %q", r.stderr)
	}
	after := mustContext(t, laptop, "localhost")
	if after.Token != "" || after.TokenName != "" || after.Server != before.Server || after.CA != before.CA || after.CASHA256 != before.CASHA256 || after.Project != before.Project {
		t.Errorf("after logout: %+v", after)
	}
	wantFail(t, runHelyos(t, laptop, "", nil, "whoami"), 1, "no API token for "+before.Server, "helyos login "+before.Server+" --name localhost'")
	wantFail(t, runHelyos(t, laptop, "", nil, "logout", "nope"), 1, `context "nope" does not exist`)

	// Log in again: same server, no fingerprint, off a terminal: the kept pin.
	r = mustRun(t, laptop, nil, "login", strings.TrimPrefix(before.Server, "https://"), "--token", secret)
	if !strings.Contains(r.stderr, `saved as context "localhost"`) || strings.Contains(r.stderr, "Trust") {
		t.Errorf("re-login:\n%s", r.stderr)
	}
	if got := whoamiName(t, laptop, nil); got != "laptop" {
		t.Errorf("whoami after re-login = %q", got)
	}
	mustRun(t, laptop, nil, "logout", "localhost")
	if r := runHelyos(t, laptop, secret+"\n", nil, paste...); r.code != 0 {
		t.Fatalf("pasting again: %s", r.stderr)
	}
	if cfg := readCLIConfig(t, laptop); len(cfg.Contexts) != 1 || cfg.Contexts[0].Token != secret {
		t.Errorf("pasting again: %v", cfg.Names())
	}

	// The daemon's own "local" context is not the name a bare login derives
	// ("localhost"), so logout's hint names it; following the hint reuses it.
	r = mustRun(t, d.home, nil, "logout")
	m = regexp.MustCompile(`log in again with 'helyos (login \S+ --name local)'`).FindStringSubmatch(r.stderr)
	if m == nil {
		t.Fatalf("logout of local hinted:\n%s", r.stderr)
	}
	wantFail(t, runHelyos(t, d.home, "", nil, "whoami"), 1, "log in with 'helyos "+m[1]+"'")
	mustRun(t, d.home, nil, append(strings.Fields(m[1]), "--token", secret)...)
	if cfg := readCLIConfig(t, d.home); len(cfg.Contexts) != 1 || cfg.Contexts[0].Name != "local" || cfg.Contexts[0].Token != secret {
		t.Errorf("following the logout hint: %v", cfg.Names())
	}
}

// TestCLIAuthTokens: create (with --ttl and --scope), ls/list in text and
// JSON, revoke, and the revoked token refused at once.
func TestCLIAuthTokens(t *testing.T) {
	t.Parallel()
	d := httpDaemon(t)
	home := d.home // the local context the daemon wrote

	r := mustRun(t, home, nil, "auth", "token", "create", "ci", "--ttl", "3600", "--scope", "admin")
	secret := strings.TrimSpace(r.stdout)
	if !tokenLineRE.MatchString("HELYOS_API_TOKEN=" + secret) {
		t.Fatalf("create printed %q on stdout, want the token alone", r.stdout)
	}
	// The secret is printed once, on stdout; the login line for a plain-HTTP
	// loopback daemon has no fingerprint and takes the token from stdin.
	if !strings.Contains(r.stderr, `token "ci" (scope admin, expires 2`) || !strings.Contains(r.stderr, "helyos: only this machine reaches the daemon (loopback)") ||
		!strings.Contains(r.stderr, "\n  helyos login "+d.url+" --token-stdin\n") {
		t.Errorf("create said:\n%s", r.stderr)
	}
	noTokenIn(t, cliResult{stderr: r.stderr}, secret)
	// --ttl takes Go durations, days, and bare seconds.
	for ttl, want := range map[string]time.Duration{"90s": 90 * time.Second, "15m": 15 * time.Minute, "12h": 12 * time.Hour, "30d": 30 * 24 * time.Hour, "3600": time.Hour} {
		var c struct {
			CreatedAt time.Time `json:"created_at"`
			ExpiresAt time.Time `json:"expires_at"`
		}
		decodeOutput(t, mustRun(t, home, nil, "--json", "auth", "token", "create", "ttl-"+ttl, "--ttl", ttl), &c)
		if got := c.ExpiresAt.Sub(c.CreatedAt); got != want {
			t.Errorf("--ttl %s: expires %v after creation, want %v", ttl, got, want)
		}
		mustRun(t, home, nil, "auth", "token", "revoke", "ttl-"+ttl)
	}
	wantFail(t, runHelyos(t, home, "", nil, "auth", "token", "create", "ro", "--scope", "reader"), 1, `scope "reader" is not valid: use admin or read`)
	var created struct {
		Name, Scope, Token string
		ExpiresAt          *string `json:"expires_at"`
		Login              *struct {
			Server   string  `json:"server"`
			CASHA256 *string `json:"ca_sha256"`
		} `json:"login"`
	}
	decodeOutput(t, mustRun(t, home, nil, "auth", "token", "create", "--json", "forever"), &created)
	if created.Name != "forever" || created.Scope != "admin" || created.ExpiresAt != nil || !strings.HasPrefix(created.Token, "nxa-api_") ||
		created.Login == nil || created.Login.Server != d.url || created.Login.CASHA256 != nil {
		t.Errorf("create --json = %+v, login %+v", created, created.Login)
	}

	text := mustRun(t, home, nil, "auth", "token", "ls").stdout
	if !regexp.MustCompile(`^NAME\s+SCOPE\s+CREATED\s+EXPIRES\s+LAST USED\s+ALLOWED FROM\n`).MatchString(text) ||
		!regexp.MustCompile(`(?m)^ci\s+admin\s+\S+Z\s+\S+Z\s+never\s+any address$`).MatchString(text) ||
		!regexp.MustCompile(`(?m)^forever\s+admin\s+\S+Z\s+never\s+`).MatchString(text) {
		t.Errorf("auth token ls:\n%s", text)
	}
	for _, s := range []string{secret, created.Token, d.token, "argon2"} {
		if strings.Contains(text, s) {
			t.Errorf("token list shows a secret or hash")
		}
	}
	var list []struct{ Name, Scope string }
	decodeOutput(t, mustRun(t, home, nil, "auth", "token", "list", "--json"), &list)
	names := []string{}
	for _, i := range list {
		names = append(names, i.Name+"/"+i.Scope)
	}
	if got := strings.Join(names, ","); got != "bootstrap/admin,ci/admin,forever/admin" {
		t.Errorf("auth token list --json names = %s", got)
	}

	if got := whoamiName(t, home, nil, "--token", secret); got != "ci" {
		t.Fatalf("whoami with the new token = %q", got)
	}
	r = mustRun(t, home, nil, "auth", "token", "revoke", "ci")
	if !strings.Contains(r.stderr, `revoked token "ci"`) {
		t.Errorf("revoke said %q", r.stderr)
	}
	// The hint logs in to the context the token came through, not a new one.
	wantFail(t, runHelyos(t, home, "", nil, "whoami", "--token", secret), 1, "the token from --token was refused", "revoked or expired",
		"run 'helyos login http://localhost:"+d.port+" --name local'")
	wantFail(t, runHelyos(t, home, "", nil, "auth", "token", "revoke", "ci"), 1, `revoke token "ci"`, "HTTP 404")
	wantFail(t, runHelyos(t, home, "", nil, "auth", "token", "create", "forever"), 1, `create token "forever"`)
}

// TestCLIPinnedCAUndecodable: a pin that cannot be read fails closed with an
// error naming the context, never a fall back to the system roots.
func TestCLIPinnedCAUndecodable(t *testing.T) {
	t.Parallel()
	d := tlsDaemon(t)
	notCert := encodeCA([]byte("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"))
	for _, tc := range []struct{ name, ca, want string }{
		{"not base64", "!!!not base64!!!", "pinned CA is not valid base64"},
		{"not PEM", encodeCA([]byte("hello")), "pinned CA: not a PEM certificate"},
		{"not a certificate", notCert, "pinned CA: parse certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			home := t.TempDir()
			path := cliConfigPath(home)
			os.MkdirAll(filepath.Dir(path), 0o700)
			body := fmt.Sprintf("current-context = \"damaged\"\n\n[context.damaged]\nserver = %q\ntoken = %q\nca = %q\nca-sha256 = %q\n", d.url, d.token, tc.ca, d.fp)
			os.WriteFile(path, []byte(body), 0o600)
			for _, args := range [][]string{{"whoami"}, {"status"}, {"login", d.url, "--token", d.token, "--name", "damaged"}} {
				r := runHelyos(t, home, "", nil, args...)
				wantFail(t, r, 1, `context "damaged"`, tc.want, "helyos login "+d.url+" --name damaged --ca-fingerprint FP\n")
				checkOutputShapes(t, args, r)
				if n := strings.Count(r.stderr, "helyos: hint: "); n != 1 {
					t.Errorf("%s gave %d hints, want the one that re-pins", args[0], n)
				}
				if strings.Contains(r.stderr, "certificate problem") {
					t.Errorf("%v dialled the daemon without the pin:\n%s", args, r.stderr)
				}
			}
			if got, _ := os.ReadFile(path); string(got) != body {
				t.Errorf("config changed")
			}
			mustRun(t, home, nil, "login", d.url, "--name", "damaged", "--ca-fingerprint", d.fp, "--token", d.token) // the hint
			if got := whoamiName(t, home, nil); got != "bootstrap" {
				t.Errorf("whoami after following the hint = %q", got)
			}
		})
	}
}

// TestCLIConfigFile: a broken file is reported with its line, a hand-edited
// file with comments works, hostile values round-trip through the CLI, file
// modes and the backup after a save, and concurrent saves lose nothing.
func TestCLIConfigFile(t *testing.T) {
	t.Parallel()
	d := httpDaemon(t)

	t.Run("broken file", func(t *testing.T) {
		t.Parallel()
		home := t.TempDir()
		path := cliConfigPath(home)
		os.MkdirAll(filepath.Dir(path), 0o700)
		body := "current-context = \"a\"\n\n[context.a]\nserver = \"http://127.0.0.1:1\"\nproject = web\n"
		os.WriteFile(path, []byte(body), 0o600)
		for _, args := range [][]string{{"whoami"}, {"context", "ls"}, {"context", "use", "a"}, {"login", d.url, "--token", d.token}} {
			wantFail(t, runHelyos(t, home, "", nil, args...), 1, "config "+path+": line 5: invalid value", "helyos: hint:", path+".bak")
		}
		if got, _ := os.ReadFile(path); string(got) != body {
			t.Errorf("a broken config was overwritten")
		}
	})

	t.Run("hand-edited with comments", func(t *testing.T) {
		t.Parallel()
		home := t.TempDir()
		path := cliConfigPath(home)
		os.MkdirAll(filepath.Dir(path), 0o755)
		body := "# my laptop\r\n\n" +
			"current-context = 'mine'   # inline comment\n" +
			"\n" +
			"  [context.mine]   # the local daemon\n" +
			"\tserver = '" + d.url + "'\n" +
			"token = \"" + d.token + "\" # secret\n" +
			"project=\"a \\\"quoted\\\" #not-a-comment\"\n" +
			"insecure = false\n" +
			"\n[context.\"other one\"]\nserver = \"https://other.invalid:6443\"\n"
		os.WriteFile(path, []byte(body), 0o644)
		r := mustRun(t, home, nil, "whoami")
		if !strings.Contains(r.stdout, "bootstrap") {
			t.Errorf("whoami: %s", r.stdout)
		}
		if !strings.Contains(r.stderr, "readable by others (mode 0644)") {
			t.Errorf("no warning about a 0644 config:\n%s", r.stderr)
		}
		var views []contextView
		decodeOutput(t, mustRun(t, home, nil, "context", "ls", "--json"), &views)
		if len(views) != 2 || views[0].Project != `a "quoted" #not-a-comment` || !views[0].Active || views[1].Name != "other one" {
			t.Errorf("hand-edited contexts = %+v", views)
		}

		mustRun(t, home, nil, "context", "set", "mine", "--project", "p2")
		if m := permOf(t, path); m != 0o600 {
			t.Errorf("config mode after a save = %o, want 600", m)
		}
		if m := permOf(t, path+".bak"); m != 0o600 {
			t.Errorf("backup mode = %o, want 600", m)
		}
		if got, _ := os.ReadFile(path + ".bak"); string(got) != body {
			t.Errorf("backup is not the previous file:\n%s", got)
		}
		if c := mustContext(t, home, "mine"); c.Project != "p2" || c.Token != d.token || c.Server != d.url {
			t.Errorf("after save: %+v", c)
		}
		if c := mustContext(t, home, "other one"); c.Server != "https://other.invalid:6443" {
			t.Errorf("other one after save: %+v", c)
		}
	})

	t.Run("hostile values and modes", func(t *testing.T) {
		t.Parallel()
		home := t.TempDir()
		hostile := "a\"b\\c#d\ne\tf ü 日本 'q' ]x[ = \x7f"
		mustRun(t, home, nil, "context", "set", "h", "--server", d.url, "--project", hostile)
		dir := filepath.Dir(cliConfigPath(home))
		if m := permOf(t, dir); m != 0o700 {
			t.Errorf("config folder mode %o, want 700", m)
		}
		if m := permOf(t, cliConfigPath(home)); m != 0o600 {
			t.Errorf("config mode %o, want 600", m)
		}
		if _, err := os.Stat(cliConfigPath(home) + ".bak"); !os.IsNotExist(err) {
			t.Errorf("first save wrote a backup")
		}
		mustRun(t, home, nil, "context", "set", "h", "--project", hostile+"2")
		if m := permOf(t, cliConfigPath(home)+".bak"); m != 0o600 {
			t.Errorf("backup mode %o, want 600", m)
		}
		var cur contextView
		decodeOutput(t, mustRun(t, home, nil, "context", "current", "--json"), &cur)
		if cur.Project != hostile+"2" {
			t.Errorf("project read back as %q, want %q", cur.Project, hostile+"2")
		}
		t.Run("tomllib reads it", func(t *testing.T) {
			needTomllib(t)
			if c := tomllibLoad(t, cliConfigPath(home)).Context("h"); c == nil || c.Project != hostile+"2" {
				t.Errorf("tomllib reads context h as %+v, want project %q", c, hostile+"2")
			}
		})
	})

	t.Run("concurrent saves", func(t *testing.T) {
		t.Parallel()
		home := t.TempDir()
		const n = 8
		var wg sync.WaitGroup
		results := make([]cliResult, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				results[i] = runHelyos(t, home, "", nil, "context", "set", fmt.Sprintf("c%d", i), "--server", fmt.Sprintf("https://c%d.invalid", i))
			}()
		}
		wg.Wait()
		for i, r := range results {
			if r.code != 0 {
				t.Errorf("save %d: exit %d: %s", i, r.code, r.stderr)
			}
		}
		cfg := readCLIConfig(t, home)
		if len(cfg.Contexts) != n {
			t.Errorf("after %d concurrent saves the config holds %v", n, cfg.Names())
		}
	})
}

// TestCLIExitCodes: --help exits 0 on every command, usage errors exit 2,
// runtime errors exit 1.
func TestCLIExitCodes(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	refused := "http://127.0.0.1:1" // nothing listens on loopback port 1
	shaped := "nxa-api_" + strings.Repeat("0", 64)
	notAToken := "the token from --token is not a helyos API token (want nxa-api_ and 64 hex characters)"
	flagError := "helyos: error: %s: unknown flag \"--bogus\"\nhelyos: hint: run 'helyos %[1]s --help'\n"
	noJSON := "helyos: error: %s: --json does not apply: it prints no data\n"
	for _, tc := range []struct {
		args []string
		code int
		want string // in stdout+stderr
	}{
		{[]string{"--help"}, 0, "Commands:"},
		{[]string{"help"}, 0, "Commands:"},
		{[]string{"-h"}, 0, "Commands:"},
		{[]string{"login", "--help"}, 0, "ca-fingerprint"},
		{[]string{"logout", "--help"}, 0, "Usage: helyos logout"},
		{[]string{"whoami", "--help"}, 0, "Usage: helyos whoami"},
		{[]string{"status", "-h"}, 0, "Usage: helyos status"},
		{[]string{"version", "--help"}, 0, "Usage: helyos version"},
		{[]string{"context", "--help"}, 0, "Usage: helyos context"},
		{[]string{"context", "ls", "--help"}, 0, "Usage: helyos context ls"},
		{[]string{"context", "list", "--help"}, 0, "Usage: helyos context ls"},
		{[]string{"context", "use", "--help"}, 0, "Usage: helyos context use"},
		{[]string{"context", "current", "--help"}, 0, "Usage: helyos context current"},
		{[]string{"context", "rename", "--help"}, 0, "Usage: helyos context rename"},
		{[]string{"context", "rm", "--help"}, 0, "Usage: helyos context rm"},
		{[]string{"context", "set", "--help"}, 0, "project"},
		{[]string{"auth", "--help"}, 0, "Usage: helyos auth token"},
		{[]string{"auth", "token", "--help"}, 0, "Usage: helyos auth token"},
		{[]string{"auth", "token", "create", "--help"}, 0, "ttl"},
		{[]string{"auth", "token", "ls", "--help"}, 0, "Usage: helyos auth token ls"},
		{[]string{"auth", "token", "list", "--help"}, 0, "Usage: helyos auth token ls"},
		{[]string{"auth", "token", "revoke", "--help"}, 0, "Usage: helyos auth token revoke"},
		{[]string{"--context", "x", "whoami", "--help"}, 0, "Usage: helyos whoami"},
		{[]string{"daemon", "--help"}, 0, "--advertise-addr host[:port]"},
		{[]string{"--version"}, 0, "helyos " + binVersion + "\n"},
		{[]string{"events", "--help"}, 0, "Usage: helyos events"},
		{[]string{"audit", "--help"}, 0, "Usage: helyos audit verify"},
		{[]string{"audit", "verify", "--help"}, 0, "data-dir"},
		{[]string{"help", "whoami"}, 0, "Usage: helyos whoami"},
		{[]string{"help", "auth", "token", "create"}, 0, "Usage: helyos auth token create"},
		{[]string{"--context", "x", "--help"}, 0, "Commands:"},

		{nil, 2, "Commands:"},
		{[]string{"bogus"}, 2, `unknown command "bogus"`},
		{[]string{"--contxt", "x", "whoami"}, 2, `helyos: error: unknown flag "--contxt"` + "\nhelyos: hint: run 'helyos --help' to see the commands and the global flags\n"},
		{[]string{"help", "bogus"}, 2, `unknown command "bogus"`},
		{[]string{"login"}, 2, "wrong number of arguments"},
		{[]string{"login", "a", "b"}, 2, "wrong number of arguments"},
		{[]string{"login", "ftp://x"}, 2, "scheme must be https or http"},
		{[]string{"login", "https://x:99999"}, 2, "invalid port"},
		{[]string{"whoami", "extra"}, 2, "wrong number of arguments"},
		{[]string{"whoami", "--bogus"}, 2, fmt.Sprintf(flagError, "whoami")},
		{[]string{"login", "--bogus"}, 2, fmt.Sprintf(flagError, "login")},
		{[]string{"context", "use", "--bogus"}, 2, fmt.Sprintf(flagError, "context use")},
		{[]string{"daemon", "--bogus"}, 2, fmt.Sprintf(flagError, "daemon")},
		{[]string{"daemon", "now"}, 2, "daemon: wrong number of arguments (1)"},
		{[]string{"--json=maybe", "whoami"}, 2, "--json takes no value"},
		{[]string{"whoami", "--server"}, 2, "flag --server needs a value"},
		{[]string{"auth"}, 2, "helyos: error: auth: give a subcommand: token\n"},
		{[]string{"auth", "tokens"}, 2, `helyos: error: auth: unknown subcommand "tokens"; use token` + "\n"},
		{[]string{"auth", "token"}, 2, "helyos: error: auth token: give a subcommand: create, ls, revoke, rotate\n"},
		{[]string{"auth", "token", "bogus"}, 2, `helyos: error: auth token: unknown subcommand "bogus"; use create, ls, revoke, rotate` + "\n"},
		{[]string{"auth", "token", "create"}, 2, "wrong number of arguments"},
		{[]string{"auth", "token", "create", "x", "--ttl", "-1"}, 2, `auth token create: invalid value "-1" for flag --ttl: want a duration such as 90s, 15m, 12h or 30d, or whole seconds`},
		{[]string{"auth", "token", "create", "x", "--ttl", "1.5d"}, 2, `invalid value "1.5d" for flag --ttl`},
		{[]string{"auth", "token", "create", "x", "--ttl", "500ms"}, 2, `invalid value "500ms" for flag --ttl`},
		{[]string{"auth", "token", "create", "x", "--ttl", shaped}, 2, `invalid value "nxa-api_<redacted>" for flag --ttl`},
		{[]string{"context", "rm"}, 2, "wrong number of arguments"},
		{[]string{"daemon", "--tls", "maybe"}, 2, "--tls must be auto, on or off"},
		{[]string{"audit"}, 2, "helyos: error: audit: give a subcommand: verify\n"},
		{[]string{"audit", "check"}, 2, `audit: unknown subcommand "check"; use verify`},
		{[]string{"events", "--since", "-5m"}, 2, `--since "-5m" is neither a record number nor a duration`},
		{[]string{"events", "extra"}, 2, "wrong number of arguments"},
		{[]string{"--json", "login", refused}, 2, fmt.Sprintf(noJSON, "login")},
		{[]string{"logout", "--json"}, 2, fmt.Sprintf(noJSON, "logout")},
		{[]string{"context", "use", "x", "--json"}, 2, fmt.Sprintf(noJSON, "context use")},
		{[]string{"context", "rename", "x", "y", "--json"}, 2, fmt.Sprintf(noJSON, "context rename")},
		{[]string{"context", "rm", "x", "--json"}, 2, fmt.Sprintf(noJSON, "context rm")},
		{[]string{"context", "set", "x", "--json"}, 2, fmt.Sprintf(noJSON, "context set")},
		{[]string{"auth", "token", "revoke", "x", "--json"}, 2, fmt.Sprintf(noJSON, "auth token revoke")},
		{[]string{"completion", "bash", "--json"}, 2, fmt.Sprintf(noJSON, "completion")},

		// A token of the wrong shape is refused before any request: the
		// server here would refuse the connection.
		{[]string{"--server", refused, "whoami", "--token", "hunter2"}, 1, notAToken},
		{[]string{"--server", refused, "auth", "token", "ls", "--token", "nxa-api_" + strings.Repeat("A", 64)}, 1, notAToken},
		{[]string{"login", "https://127.0.0.1:1", "--token", "hunter2"}, 1, notAToken},
		{[]string{"--server", refused, "whoami", "--token", shaped}, 1, "cannot reach " + refused + ": connection refused"},
		{[]string{"--server", refused, "status"}, 1, "is the daemon running? start one with 'helyos daemon'"},
		{[]string{"--server", refused, "events", "--follow", "--token", shaped}, 1, "is the daemon running?"},
		{[]string{"--server", "https://127.0.0.1:1", "auth", "token", "ls", "--token", shaped}, 1, "connection refused"},
		// A name no resolver can hold (a label ends in '-') fails without a
		// DNS query: the message says so, with a hint.
		{[]string{"login", "nohost-.invalid", "--token", shaped}, 1, `cannot reach https://nohost-.invalid:6443: no host is named "nohost-.invalid"` + "\nhelyos: hint: check the spelling"},
		{[]string{"context", "use", "nope"}, 1, `context "nope" does not exist`},
		{[]string{"logout"}, 1, "there are no contexts"},
		{[]string{"--server", refused, "version"}, 0, "no server version"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			t.Parallel()
			// The Go resolver only: it refuses a malformed name without a query.
			r := runHelyos(t, home, "", []string{"GODEBUG=netdns=go"}, tc.args...)
			if r.code != tc.code {
				t.Errorf("exit %d, want %d\nstdout: %s\nstderr: %s", r.code, tc.code, r.stdout, r.stderr)
			}
			if n := strings.Count(r.stdout+r.stderr, tc.want); n == 0 || (tc.code != 0 && n > 1) {
				t.Errorf("output has %q %d times, want once\nstdout: %s\nstderr: %s", tc.want, n, r.stdout, r.stderr)
			}
			if strings.Contains(r.stderr, "hunter2") {
				t.Errorf("a rejected token was echoed:\n%s", r.stderr)
			}
			if m := regexp.MustCompile(`(?m)^\s+-[a-z]`).FindString(r.stdout + r.stderr); tc.code == 0 && m != "" {
				t.Errorf("help shows a flag as -flag (%q), not --flag:\n%s", m, r.stdout+r.stderr)
			}
			if tc.code == 1 && !strings.HasPrefix(r.stderr, "helyos: error: ") && !strings.Contains(r.stderr, "\nhelyos: error: ") {
				t.Errorf("runtime error not in the one error format:\n%s", r.stderr)
			}
			if tc.code != 0 && r.stdout != "" {
				t.Errorf("a failure wrote to stdout: %s", r.stdout)
			}
		})
	}
	if _, err := os.Stat(cliConfigPath(home)); !os.IsNotExist(err) {
		t.Errorf("help and failing commands wrote a config: %v", filesUnder(t, home))
	}
}

// TestCLIUnreachableHints: "start one with 'helyos daemon'" is for a
// loopback server only; a refused remote server and an unknown host name get
// hints of their own. The errors are built here: tests dial no remote host.
func TestCLIUnreachableHints(t *testing.T) {
	refused := &url.Error{Op: "Get", URL: "x", Err: &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}}
	unknown := &url.Error{Op: "Get", URL: "x", Err: &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "no such host", Name: "clustr.example.com", IsNotFound: true}}}
	local := &Context{Name: "local"}
	for _, tc := range []struct {
		server    string
		ctx       *Context
		err       error
		msg, hint string
	}{
		{"http://localhost:6443", nil, refused, "cannot reach http://localhost:6443: connection refused", "start one with 'helyos daemon'\x00"},
		{"http://localhost:6443", local, refused, "connection refused", "start one with 'helyos daemon'; if it now listens elsewhere: helyos context set local --server URL\x00"},
		{"https://cluster.example.com:6443", local, refused, "connection refused", "on this port? On the server, 'helyos auth token create' prints the address to log in to; if it now listens elsewhere: helyos context set local --server URL\x00"},
		{"https://[::1]:6443", nil, refused, "connection refused", "start one with 'helyos daemon'"},
		{"https://cluster.example.com:6443", nil, refused, "cannot reach https://cluster.example.com:6443: connection refused", "is the daemon running there, on this port?"},
		{"https://clustr.example.com:6443", nil, unknown, `cannot reach https://clustr.example.com:6443: no host is named "clustr.example.com"`, "check the spelling of the host name"},
	} {
		err := (&target{server: tc.server, ctx: tc.ctx}).transportError(tc.err)
		var h *hintError
		if !errors.As(err, &h) || !strings.HasSuffix(err.Error(), tc.msg) || !strings.Contains(h.hint+"\x00", tc.hint) {
			t.Errorf("%s: %v (%+v); want %q, hint %q", tc.server, err, h, tc.msg, tc.hint)
		}
	}
}

// TestCLIPlainHTTPWarning: resolving a plain-HTTP server that is not on
// loopback warns on stderr; loopback does not. The target is only built,
// never dialled, so this test needs no network.
func TestCLIPlainHTTPWarning(t *testing.T) {
	t.Setenv("HELYOS_CONFIG", filepath.Join(t.TempDir(), "config.toml"))
	t.Setenv("HELYOS_CONTEXT", "")
	t.Setenv("HELYOS_SERVER", "")
	t.Setenv("HELYOS_API_TOKEN", "")
	for _, tc := range []struct {
		server string
		warn   bool
	}{
		{"http://192.0.2.1:6443", true},
		{"http://helyos.example.com", true},
		{"http://127.0.0.1:6443", false},
		{"http://127.0.0.2:6443", false},
		{"http://localhost:6443", false},
		{"http://[::1]:6443", false},
		{"https://192.0.2.1:6443", false},
	} {
		var stderr bytes.Buffer
		g := &globals{server: tc.server, token: "nxa-api_" + strings.Repeat("0", 64), io: &stdio{in: os.Stdin, out: io.Discard, err: &stderr}}
		tgt, err := g.resolve()
		if err != nil {
			t.Fatalf("%s: %v", tc.server, err)
		}
		warned := strings.Contains(stderr.String(), "helyos: warning: "+tgt.server+" is plain HTTP")
		if warned != tc.warn {
			t.Errorf("%s: warned %v, want %v: %q", tc.server, warned, tc.warn, stderr.String())
		}
	}
	// login warns too. With no token and no terminal it stops before it
	// dials anything.
	wantFail(t, runHelyos(t, t.TempDir(), "", nil, "login", "http://192.0.2.1"), 1,
		"helyos: warning: http://192.0.2.1:6443 is plain HTTP", "no API token given")
	if r := runHelyos(t, t.TempDir(), "", nil, "login", "http://127.0.0.1:1"); strings.Contains(r.stderr, "warning") {
		t.Errorf("login to loopback HTTP warned: %s", r.stderr)
	}
}

// TestCLIVersionStatus: version and status against a daemon, text and JSON.
func TestCLIVersionStatus(t *testing.T) {
	t.Parallel()
	d := tlsDaemon(t)
	r := mustRun(t, d.home, nil, "version")
	if r.stdout != "client: "+binVersion+"\nserver: "+binVersion+"\n" {
		t.Errorf("version = %q", r.stdout)
	}
	var v struct{ Client, Server string }
	decodeOutput(t, mustRun(t, d.home, nil, "version", "--json"), &v)
	if v.Client != binVersion || v.Server != binVersion {
		t.Errorf("version --json = %+v", v)
	}

	text := mustRun(t, d.home, nil, "status").stdout
	for _, re := range []string{
		`(?m)^server:\s+https://localhost:` + d.port + `$`,
		`(?m)^context:\s+local$`,
		`(?m)^version:\s+` + regexp.QuoteMeta(binVersion) + ` \(api v1\)$`,
		`(?m)^tls:\s+pinned$`,
		`(?m)^auth:\s+ok, as "bootstrap" \(scope admin\)$`,
	} {
		if !regexp.MustCompile(re).MatchString(text) {
			t.Errorf("status lacks %s:\n%s", re, text)
		}
	}
	var st struct {
		Server, Context, Version, TLS, Auth string
		Whoami                              struct{ Name string }
	}
	decodeOutput(t, mustRun(t, d.home, nil, "status", "--json"), &st)
	if st.Server != "https://localhost:"+d.port || st.Context != "local" || st.Version != binVersion || st.TLS != "pinned" || st.Auth != "ok" || st.Whoami.Name != "bootstrap" {
		t.Errorf("status --json = %+v", st)
	}
	// A refused token is reported, not fatal: the daemon is reachable.
	text = mustRun(t, d.home, nil, "status", "--token", "nxa-api_"+strings.Repeat("0", 64)).stdout
	if !strings.Contains(text, "auth:") || !strings.Contains(text, "refused") {
		t.Errorf("status with a bad token:\n%s", text)
	}
}

// TestCLIVersionAnswerMayGrow: status and version read the two fields they
// show and let a daemon of another build send more, whatever their type.
func TestCLIVersionAnswerMayGrow(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/api/v1/whoami" {
			io.WriteString(w, `{"name":"ci","scope":"read"}`)
			return
		}
		io.WriteString(w, `{"version":"9.9","api":"v1","uptime_secs":12,"build":{"go":"1.99"}}`)
	}))
	t.Cleanup(srv.Close)
	for _, args := range [][]string{{"status"}, {"status", "--json"}, {"version"}, {"version", "--json"}} {
		r := mustRun(t, t.TempDir(), nil, append([]string{"--server", srv.URL, "--token", fakeToken}, args...)...)
		if !strings.Contains(r.stdout, "9.9") || r.stderr != "" {
			t.Errorf("%v:\nstdout: %s\nstderr: %s", args, r.stdout, r.stderr)
		}
	}
}

// TestCLIServerAddresses: what a person types becomes scheme://host:port,
// and the derived context name follows the host.
func TestCLIServerAddresses(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want, name string }{
		{"cluster.example.com", "https://cluster.example.com:6443", "cluster-example-com"},
		{"helyos.acme.internal", "https://helyos.acme.internal:6443", "helyos-acme-internal"},
		{"Cluster.Example.COM:7000", "https://cluster.example.com:7000", "cluster-example-com"},
		{"http://10.0.0.5", "http://10.0.0.5:6443", "10-0-0-5"},
		{"https://10.0.0.5:6443/", "https://10.0.0.5:6443", "10-0-0-5"},
		{"::1", "https://[::1]:6443", "1"},
		{"[::1]:7000", "https://[::1]:7000", "1"},
		{"https://[fd00::5]", "https://[fd00::5]:6443", "fd00-5"},
		{" localhost ", "https://localhost:6443", "localhost"},
	} {
		got, err := normalizeServer(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("normalizeServer(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			continue
		}
		if n := contextNameFor(got); n != tc.name {
			t.Errorf("contextNameFor(%q) = %q, want %q", got, n, tc.name)
		}
	}
	for _, in := range []string{"", "ftp://x", "https://x:0", "https://x:65536", "https://u@x", "https://x/path", "https://x?q=1", "https://",
		"https://%25%25", "https://x%25eth0", "https://[10.0.0.1%25eth0]", "https://[fe80::1%25eth0]", "fe80::1%eth0"} {
		if got, err := normalizeServer(in); err == nil {
			t.Errorf("normalizeServer(%q) = %q, want an error", in, got)
		}
	}
}

// TestCLILoginIPv6: login to [::1] with the brackets and port handled, when
// the machine has IPv6 loopback.
func TestCLILoginIPv6(t *testing.T) {
	t.Parallel()
	if l, err := net.Listen("tcp", "[::1]:0"); err != nil {
		skipOrFailInCI(t, "no IPv6 loopback: %v", err)
	} else {
		l.Close()
	}
	d := tlsDaemon(t, "--host", "::1")
	home := t.TempDir()
	mustRun(t, home, nil, "login", "[::1]:"+d.port, "--ca-fingerprint", d.fp, "--token", d.token, "--name", "v6")
	if c := mustContext(t, home, "v6"); c.Server != "https://[::1]:"+d.port || c.CASHA256 != d.fp {
		t.Errorf("context = %+v", c)
	}
	if got := whoamiName(t, home, nil); got != "bootstrap" {
		t.Errorf("whoami over ::1 = %q", got)
	}
}

// TestCLIWrongScheme: http:// to an HTTPS daemon and https:// to a plain
// HTTP one each fail with a hint naming the right scheme.
func TestCLIWrongScheme(t *testing.T) {
	t.Parallel()
	s, p := tlsDaemon(t), httpDaemon(t)
	home := t.TempDir()
	wantFail(t, runHelyos(t, home, "", nil, "--server", "http://127.0.0.1:"+s.port, "--token", s.token, "whoami"), 1,
		"use https:// in the server address")
	wantFail(t, runHelyos(t, home, "", nil, "--server", "https://127.0.0.1:"+p.port, "--token", p.token, "whoami"), 1,
		"does not speak TLS", "use http:// in the server address")
	wantFail(t, runHelyos(t, home, "", nil, "login", "https://127.0.0.1:"+p.port, "--token", p.token, "--ca-fingerprint", strings.Repeat("0", 64)), 1,
		"does not speak TLS")
}

// TestCLITokenPromptInterrupted: Ctrl-C at the token prompt must not leave
// the terminal with echo turned off.
func TestCLITokenPromptInterrupted(t *testing.T) {
	t.Parallel()
	d := tlsDaemon(t)
	p := startOnPty(t, t.TempDir(), nil, "login", d.url, "--ca-fingerprint", d.fp)
	p.waitFor(t, "API token: ")
	var during syscall.Termios
	if err := ptyIoctl(p.master, 0x5401, unsafe.Pointer(&during)); err != nil { // TCGETS
		skipOrFailInCI(t, "read terminal settings: %v", err)
	}
	if during.Lflag&syscall.ECHO != 0 {
		t.Fatalf("echo is on at the token prompt")
	}
	if _, err := p.master.Write([]byte{0x03}); err != nil { // Ctrl-C
		t.Fatal(err)
	}
	code, out := p.wait(t)
	if code == 0 {
		t.Fatalf("login went on after Ctrl-C:\n%s", out)
	}
	var after syscall.Termios
	if err := ptyIoctl(p.master, 0x5401, unsafe.Pointer(&after)); err != nil {
		t.Fatal(err)
	}
	if after.Lflag&syscall.ECHO == 0 {
		t.Errorf("Ctrl-C at the token prompt left the terminal without echo")
	}
}

// FuzzNormalizeServer: whatever a person types, the normaliser never panics,
// and an address it accepts is scheme://host:port with a valid port, is
// already normal (normalising it again changes nothing, so it names the same
// daemon as the input), and yields a valid context name.
func FuzzNormalizeServer(f *testing.F) {
	for _, s := range []string{
		"helyos.acme.internal", "https://10.0.0.7:6443", "http://127.0.0.1:8080/",
		"::1", "[::1]:7000", "HTTPS://Example.COM", "localhost:0", "https://h:65536",
		"ftp://h", "https://user@h", "https://h/path?q#f", " h ", "[fe80::1%25eth0]:1", "NXA-API_0123ABCD",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out, err := normalizeServer(in)
		if err != nil {
			return
		}
		u, err := url.Parse(out)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Hostname() == "" {
			t.Fatalf("normalizeServer(%q) = %q: not scheme://host:port (%v)", in, out, err)
		}
		if port, err := strconv.Atoi(u.Port()); err != nil || port < 1 || port > 65535 {
			t.Fatalf("normalizeServer(%q) = %q: bad port", in, out)
		}
		again, err := normalizeServer(out)
		if err != nil || again != out {
			t.Fatalf("not idempotent: %q → %q → %q (%v)", in, out, again, err)
		}
		if name := contextNameFor(out); checkContextName(name) != nil || checkContextName(name+"-99") != nil {
			t.Fatalf("contextNameFor(%q) = %q is not a valid context name", out, name)
		}
	})
}

// FuzzContextName: a name derived from any server string is valid, and any
// name the CLI accepts survives a save and a read of the config file.
func FuzzContextName(f *testing.F) {
	for _, s := range []string{"prod", "helyos-acme-internal", "a.b_c-d", "-x", "", "é", "a b", "x\"]\n[y", strings.Repeat("a", 65)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if name := contextNameFor(s); checkContextName(name) != nil {
			t.Fatalf("contextNameFor(%q) = %q is not a valid context name", s, name)
		}
		if checkContextName(s) != nil {
			return
		}
		cfg := &Config{CurrentContext: s, Contexts: []*Context{{Name: s, Server: "https://h:6443", Project: "default"}}}
		back, err := parseConfig(cfg.marshal())
		if err != nil {
			t.Fatalf("name %q: written config does not parse: %v", s, err)
		}
		if !cfgEqual(cfg, back) {
			t.Fatalf("name %q changed in a round trip:\n%s", s, cfgString(back))
		}
	})
}

// TestTokenErrorsNameTheStep: a token command that fails to reach the daemon
// says which step failed, as the output rules in main.go ask.
func TestTokenErrorsNameTheStep(t *testing.T) {
	t.Parallel()
	refused := []string{"--server", "http://127.0.0.1:1", "--token", "nxa-api_" + strings.Repeat("0", 64)}
	home := t.TempDir()
	for step, cmd := range map[string][]string{
		"list tokens": {"auth", "token", "ls"}, `create token "x"`: {"auth", "token", "create", "x"},
		`rotate token "x"`: {"auth", "token", "rotate", "x"}, `revoke token "x"`: {"auth", "token", "revoke", "x"},
	} {
		r := runHelyos(t, home, "", nil, append(cmd, refused...)...)
		if want := "helyos: error: " + step + ": cannot reach "; r.code != 1 || !strings.HasPrefix(r.stderr, want) {
			t.Errorf("helyos %s: exit %d, stderr %q; want exit 1 and a line starting %q", strings.Join(cmd, " "), r.code, r.stderr, want)
		}
	}
}
