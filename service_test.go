package main

import (
	"bufio"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSystemdUnitVerifies runs systemd-analyze verify on contrib/helyos.service
// and checks the promises the unit makes. verify insists that ExecStart's
// binary exists, so the copy it checks differs from the real unit in that
// one path alone. verify exits 0 on warnings, so any output fails the test.
func TestSystemdUnitVerifies(t *testing.T) {
	t.Parallel()
	tool := needTool(t, "systemd-analyze")
	data := mustReadFile(t, filepath.Join("contrib", "helyos.service"))
	unit := string(data)
	const execStart = "\nExecStart=/usr/local/bin/helyos daemon "
	if strings.Count(unit, execStart) != 1 {
		t.Fatalf("the unit has no single %q line", strings.TrimSpace(execStart))
	}
	for _, line := range []string{
		"Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "DynamicUser=yes", "StateDirectory=helyos",
		"NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "CapabilityBoundingSet=",
		"RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX", "SystemCallFilter=@system-service",
		"#AmbientCapabilities=CAP_NET_BIND_SERVICE",
	} {
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(line) + `$`).MatchString(unit) {
			t.Errorf("the unit lacks the line %q", line)
		}
	}
	if !strings.Contains(unit, execStart+"--host 0.0.0.0 --data-dir %S/helyos\n") {
		t.Errorf("ExecStart does not use the StateDirectory as --data-dir")
	}
	path := filepath.Join(t.TempDir(), "helyos.service")
	if err := os.WriteFile(path, []byte(strings.Replace(unit, execStart, "\nExecStart="+helyosBin+" daemon ", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(tool, "verify", path).CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// listenNotify is systemd's end of $NOTIFY_SOCKET: a unixgram socket at a
// path, or in the abstract namespace when the name starts with "@".
func listenNotify(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// expectNotify reads the next message and checks it is want.
func expectNotify(t *testing.T, conn *net.UnixConn, want string) {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(2 * time.Minute))
	buf := make([]byte, 4096)
	n, _, err := conn.ReadFrom(buf)
	if err != nil || string(buf[:n]) != want {
		t.Fatalf("notify socket: got %q (%v), want %q", buf[:n], err, want)
	}
}

// TestSdNotify starts the real daemon with $NOTIFY_SOCKET pointing at a
// socket the test listens on: READY=1 once it serves, RELOADING=1 and
// READY=1 around a SIGHUP, STOPPING=1 at SIGTERM.
func TestSdNotify(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, socket string }{
		{"path", filepath.Join(t.TempDir(), "notify")},
		{"abstract", "@helyos-test-" + randomHex(t)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			conn := listenNotify(t, tc.socket)
			d := startDaemon(t, t.TempDir(), nil, "NOTIFY_SOCKET="+tc.socket)
			expectNotify(t, conn, "READY=1")
			if code, _, _ := d.do(t, "GET", "/health", "", ""); code != http.StatusOK {
				t.Fatalf("GET /health after READY=1: %d", code)
			}
			d.cmd.Process.Signal(syscall.SIGHUP)
			expectNotify(t, conn, "RELOADING=1")
			expectNotify(t, conn, "READY=1")
			d.cmd.Process.Signal(syscall.SIGTERM)
			expectNotify(t, conn, "STOPPING=1")
			<-d.exited
			if code := d.cmd.ProcessState.ExitCode(); code != 0 {
				t.Errorf("exit %d after SIGHUP and SIGTERM:\n%s", code, d.out.String())
			}
		})
	}
}

func randomHex(t *testing.T) string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// journalStderr in startDaemon's env stands for $JOURNAL_STREAM set to the
// daemon's stderr, as systemd sets it when stderr is the journal.
const journalStderr = "JOURNAL_STREAM=stderr"

var logStampRE = regexp.MustCompile(`^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d `)

// TestDaemonLogFormats: the shape of every log line and where the first-run
// token goes, for each format, under systemd and not. Under systemd or with
// JSON logs the token is only in DATA_DIR/bootstrap-token, never in the
// output, and no CLI context is written for the service's user. A
// $JOURNAL_STREAM that is not stderr (inherited from a service that started
// the shell) is not the journal.
func TestDaemonLogFormats(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name                         string
		args, env                    []string
		json, stamp, inFile, service bool
	}{
		{"text", nil, nil, false, true, false, false},
		{"text in the journal", nil, []string{journalStderr}, false, false, true, true},
		{"text, $JOURNAL_STREAM inherited", nil, []string{"JOURNAL_STREAM=8:1234"}, false, true, false, false},
		{"text with a notify socket", nil, []string{"NOTIFY_SOCKET=/nonexistent/notify"}, false, true, true, true},
		{"json", []string{"--log-format", "json"}, nil, true, true, true, false},
		{"json in the journal", []string{"--log-format", "json"}, []string{journalStderr}, true, false, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			home := t.TempDir()
			d := startDaemon(t, home, tc.args, tc.env...)
			token := d.token
			if tc.inFile {
				token = readBootstrapToken(t, d)
			}
			if code, _, body := d.do(t, "GET", "/api/v1/whoami", token, ""); code != http.StatusOK {
				t.Fatalf("the first-run token is refused: %d %s", code, body)
			}
			d.stop(t)
			out := d.out.String()
			if n := strings.Count(out, token); n != map[bool]int{true: 0, false: 1}[tc.inFile] {
				t.Errorf("the token appears %d times in the output:\n%s", n, out)
			}
			if tc.inFile && !strings.Contains(out, filepath.Join(d.dataDir, bootstrapTokenFile)) {
				t.Errorf("the log does not name the token file:\n%s", out)
			}
			if _, err := os.Stat(filepath.Join(home, ".helyos", "config.toml")); (err == nil) == tc.service {
				t.Errorf("local CLI context written: %v, under systemd: %v", err == nil, tc.service)
			}
			checkLogLines(t, out, tc.json, tc.stamp)
		})
	}
}

// checkLogLines checks every line of out: JSON objects or text, with or
// without a time stamp. The two token lines of a text first start are the
// only lines that are not log lines.
func checkLogLines(t *testing.T, out string, isJSON, stamp bool) {
	t.Helper()
	if !strings.Contains(out, "listening on") || !strings.Contains(out, "shutting down") {
		t.Fatalf("output lacks start and stop lines:\n%s", out)
	}
	for _, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		if isJSON {
			var obj map[string]any
			if err := json.Unmarshal([]byte(line), &obj); err != nil || obj["msg"] == nil || obj["level"] == nil {
				t.Errorf("not a JSON log object: %q", line)
			}
			if _, hasTime := obj["time"]; hasTime != stamp {
				t.Errorf("time present %v, want %v: %q", hasTime, stamp, line)
			}
			continue
		}
		if strings.HasPrefix(line, "Generated new API token") || strings.HasPrefix(line, "HELYOS_API_TOKEN=") {
			continue
		}
		if !strings.HasPrefix(logStampRE.ReplaceAllString(line, ""), "helyos: ") || logStampRE.MatchString(line) != stamp {
			t.Errorf("time stamp %v wanted, line %q", stamp, line)
		}
	}
}

// readBootstrapToken reads DATA_DIR/bootstrap-token and checks its mode.
func readBootstrapToken(t *testing.T, d *testDaemon) string {
	t.Helper()
	path := filepath.Join(d.dataDir, bootstrapTokenFile)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("no token file: %v\n%s", err, d.out.String())
	}
	if m := permOf(t, path); m != 0o600 {
		t.Errorf("%s mode %o, want 600", bootstrapTokenFile, m)
	}
	token, ok := strings.CutSuffix(string(data), "\n")
	if _, valid := parseAPIToken(token); !ok || !valid {
		t.Fatalf("%s does not hold one token line", bootstrapTokenFile)
	}
	return token
}

// TestBootstrapTokenFileNeverOverwritten: a token file left from an earlier
// first start (its store since deleted) stops the daemon, which says what
// to do and changes nothing.
func TestBootstrapTokenFileNeverOverwritten(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	dataDir := filepath.Join(home, "data")
	os.MkdirAll(dataDir, 0o700)
	path := filepath.Join(dataDir, bootstrapTokenFile)
	os.WriteFile(path, []byte("left over\n"), 0o600)
	r := runRefusedDaemon(t, home, []string{"NOTIFY_SOCKET=/nonexistent/notify"}, "--port", "0", "--data-dir", dataDir)
	if r.code != 1 || !strings.Contains(r.stderr, path+" already exists but the token store is empty") ||
		!strings.Contains(r.stderr, "helyos: hint: it is left from an earlier first start: delete it") {
		t.Fatalf("exit %d:\n%s", r.code, r.stderr)
	}
	if data, _ := os.ReadFile(path); string(data) != "left over\n" {
		t.Errorf("the file was changed: %q", data)
	}
	if _, err := os.Stat(filepath.Join(dataDir, tokenStoreFile)); err == nil {
		t.Errorf("a token was stored that nobody was given")
	}
}

// TestSIGHUPReloadsCertificate: after the operator's files are replaced and
// SIGHUP sent, new connections get the new certificate while an open
// keep-alive connection still answers; a broken pair (key and certificate
// apart, a certificate out of date, a key every user may read) leaves the
// one in service, and is refused at start as well.
func TestSIGHUPReloadsCertificate(t *testing.T) {
	t.Parallel()
	ca, err := loadOrCreateCA(t.TempDir(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	issueAt := func(now time.Time) (dir string, serial *big.Int) {
		dir = t.TempDir()
		c, err := ca.issueServerCert(dir, []string{"127.0.0.1", "localhost"}, now)
		if err != nil {
			t.Fatal(err)
		}
		return dir, c.Leaf.SerialNumber
	}
	issue := func() (string, *big.Int) { return issueAt(time.Now()) }
	live, first := issue()
	certPath, keyPath := filepath.Join(live, serverCertFile), filepath.Join(live, serverKeyFile)
	d := startDaemon(t, t.TempDir(), []string{"--tls", "on", "--tls-cert", certPath, "--tls-key", keyPath})
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	dial := func() *tls.Conn {
		conn, err := tls.Dial("tcp", "127.0.0.1:"+d.port, &tls.Config{RootCAs: pool})
		if err != nil {
			t.Fatal(err)
		}
		return conn
	}
	servedSerial := func() *big.Int {
		conn := dial()
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber
	}
	old := dial()
	defer old.Close()
	oldReader := bufio.NewReader(old)
	health := func() {
		t.Helper()
		old.Write([]byte("GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n"))
		resp, err := http.ReadResponse(oldReader, nil)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("the open connection: %v %v", resp, err)
		}
		resp.Body.Close()
	}
	health()

	next, second := issue()
	copyFile(t, filepath.Join(next, serverKeyFile), keyPath)
	copyFile(t, filepath.Join(next, serverCertFile), certPath)
	d.cmd.Process.Signal(syscall.SIGHUP)
	pollUntil(t, "the new certificate is served", func() bool { return servedSerial().Cmp(second) == 0 })
	health()
	if got := old.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(first) != 0 {
		t.Errorf("the open connection changed certificate")
	}

	other, _ := issue()
	expired, _ := issueAt(time.Now().Add(-2 * serverValidity))
	loose, _ := issue()
	for _, b := range []struct {
		from, log string
		keyMode   os.FileMode
	}{
		{other, "tls: private key does not match public key", 0o600}, // its certificate with the old key
		{expired, "is valid from ", 0o600},
		{loose, keyPath + " is readable by every user (mode 0644); chmod o-rwx it", 0o644},
	} {
		copyFile(t, filepath.Join(b.from, serverCertFile), certPath)
		if b.from != other {
			copyFile(t, filepath.Join(b.from, serverKeyFile), keyPath)
		}
		os.Chmod(keyPath, b.keyMode)
		if r := runHelyos(t, t.TempDir(), "", nil, "daemon", "--port", "0", "--tls-cert", certPath, "--tls-key", keyPath); r.code != 1 || !strings.Contains(r.stderr, b.log) {
			t.Errorf("start with a broken pair: exit %d, want 1 and %q:\n%s", r.code, b.log, r.stderr)
		}
		d.cmd.Process.Signal(syscall.SIGHUP)
		pollUntil(t, "the broken pair is reported", func() bool {
			return strings.Contains(d.out.String(), "error: SIGHUP: keeping the certificate in service: load --tls-cert and --tls-key: ") &&
				strings.Contains(d.out.String(), b.log)
		})
		if servedSerial().Cmp(second) != 0 {
			t.Errorf("a broken pair replaced the certificate in service")
		}
		health()
	}
	var reloads []auditRecord
	pollUntil(t, "the reloads are in the audit log", func() bool {
		reloads = eventsNamed(readAuditFile(t, filepath.Join(d.dataDir, auditFileName)), "cert.reissued")
		return len(reloads) == 4
	})
	if r := reloads[0]; r.Outcome != outcomeSuccess || str(r.Target) != certPath || r.Detail["reason"] != "SIGHUP" || r.Detail["serial"] != second.Text(16) {
		t.Errorf("the reload's record: %+v", r)
	}
	for _, r := range reloads[1:] {
		if r.Outcome != outcomeFailure || !strings.Contains(fmt.Sprint(r.Detail["error"]), "load --tls-cert and --tls-key: ") {
			t.Errorf("a failed reload's record: %+v", r)
		}
	}
}

// TestJSONLogLevels: with --log-format json a warning, an error or a debug
// line carries its level, and a daemon that cannot start says why, with the
// hint, in JSON lines too.
func TestJSONLogLevels(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	d := startDaemon(t, home, []string{"--log-format", "json", "--log-level", "debug"}, "NOTIFY_SOCKET=/nonexistent/notify")
	d.do(t, "GET", "/api/v1/whoami", "garbage", "")
	refused := runHelyos(t, home, "", nil, "daemon", "--port", "0", "--log-format", "json") // the data dir is in use
	d.stop(t)
	if refused.code != 1 {
		t.Errorf("a second daemon on the data dir: exit %d", refused.code)
	}
	var got []string
	for _, line := range strings.Split(strings.TrimSpace(d.out.String()+refused.stderr), "\n") {
		var obj struct{ Level, Msg string }
		if err := json.Unmarshal([]byte(line), &obj); err != nil {
			t.Errorf("not a JSON log object: %q", line)
		}
		got = append(got, obj.Level+" "+obj.Msg)
	}
	for _, want := range []string{
		"WARN notify systemd (READY=1): dial unixgram /nonexistent/notify: ",
		"ERROR data dir " + d.dataDir + " is in use by another helyos daemon",
		"INFO hint: stop that daemon, or give this one its own --data-dir",
		"DEBUG refused the bearer token of a request from 127.0.0.1:",
	} {
		if !slices.ContainsFunc(got, func(s string) bool { return strings.HasPrefix(s, want) }) {
			t.Errorf("no log line %q in:\n%s", want, strings.Join(got, "\n"))
		}
	}
}
