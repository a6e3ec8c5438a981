package main

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

const unauthorizedBody = `{"error": "missing or invalid bearer token"}`

// TestGuardrails runs every cell of host × --tls × --insecure-http × token.
func TestGuardrails(t *testing.T) {
	const given = "nxa-api_00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
	type row struct {
		host, tls string
		insecure  bool
		token     bool
	}
	var rows []row
	for _, host := range []string{"127.0.0.1", "0.0.0.0"} {
		for _, mode := range []string{"auto", "on", "off"} {
			for _, insecure := range []bool{false, true} {
				for _, token := range []bool{false, true} {
					rows = append(rows, row{host, mode, insecure, token})
				}
			}
		}
	}
	for _, r := range rows {
		name := r.host + "/tls=" + r.tls
		if r.insecure {
			name += "/insecure-http"
		}
		if r.token {
			name += "/token"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			home := t.TempDir()
			args := []string{"--port", "0", "--host", r.host, "--tls", r.tls}
			if r.insecure {
				args = append(args, "--insecure-http")
			}
			var env []string
			if r.token {
				env = append(env, "HELYOS_API_TOKEN="+given)
			}
			wantScheme := "https"
			wantErr := ""
			switch {
			case r.tls == "off" && r.host == "0.0.0.0" && !r.insecure:
				wantErr = "refusing to serve a non-loopback address (0.0.0.0) over plain HTTP; use --tls on, or pass BOTH --tls off and --insecure-http"
			case r.tls == "off" && r.host == "0.0.0.0" && !r.token:
				wantErr = "refusing to expose a non-loopback address with no API token configured; set --api-token / HELYOS_API_TOKEN first"
			case r.tls == "off" || (r.tls == "auto" && r.host == "127.0.0.1"):
				wantScheme = "http"
			}
			if wantErr != "" {
				res := runRefusedDaemon(t, home, env, args...)
				if res.code != 1 || !strings.Contains(res.stderr, "helyos: error: "+wantErr+"\n") {
					t.Fatalf("exit %d, stderr %q; want exit 1 and %q", res.code, res.stderr, wantErr)
				}
				if files := filesUnder(t, home); len(files) != 0 {
					t.Errorf("a refused start wrote %v", files)
				}
				return
			}
			d := startDaemon(t, home, args[2:], env...)
			if !strings.HasPrefix(d.url, wantScheme+"://") {
				t.Fatalf("daemon serves %s, want %s", d.url, wantScheme)
			}
			if code, _, body := d.do(t, "GET", "/health", "", ""); code != 200 || body != "ok\n" {
				t.Errorf("GET /health = %d %q", code, body)
			}
		})
	}
}

// TestGuardrailCountsStoredAndRevokedTokens: a token from an earlier run
// counts as configured; a given token that was revoked does not.
func TestGuardrailCountsStoredAndRevokedTokens(t *testing.T) {
	t.Parallel()
	plain := []string{"--host", "0.0.0.0", "--tls", "off", "--insecure-http"}

	stored := t.TempDir()
	first := startDaemon(t, stored, nil)
	first.stop(t)
	d := startDaemon(t, stored, plain)
	if code, _, _ := d.do(t, "GET", "/api/v1/whoami", first.token, ""); code != 200 {
		t.Errorf("stored token after restart on 0.0.0.0: %d", code)
	}

	revoked := t.TempDir()
	const given = "nxa-api_ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"
	env := "HELYOS_API_TOKEN=" + given
	d = startDaemon(t, revoked, nil, env)
	brief := d.createToken(t, given, "brief", 5) // another admin, so bootstrap is not the last one
	if code, _, _ := d.do(t, "DELETE", "/api/v1/tokens/bootstrap", given, ""); code != 204 {
		t.Fatalf("revoke bootstrap: %d", code)
	}
	waitStatus(t, d, brief, 401) // until brief has expired too
	d.stop(t)
	res := runRefusedDaemon(t, revoked, []string{env}, append([]string{"--port", "0"}, plain...)...)
	if res.code != 1 || !strings.Contains(res.stderr, "with no API token configured") {
		t.Fatalf("revoked given token passed the guardrail: exit %d %s", res.code, res.stderr)
	}
}

func TestDaemonUsageErrors(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		args []string
		env  []string
		want string
	}{
		{"bad tls mode", []string{"--tls", "maybe"}, nil, `--tls must be auto, on or off, not "maybe"`},
		{"bad log format", []string{"--log-format", "xml"}, nil, `--log-format must be text or json, not "xml"`},
		{"audit size too small", []string{"--audit-max-size", "1000"}, nil, `daemon: invalid value "1000" for flag --audit-max-size: "1000" is not a size of at least 1KiB`},
		{"audit size in MB", []string{"--audit-max-size", "64MB"}, nil, `"64MB" is not a size of at least 1KiB, such as 1048576, 512KiB or 64MiB`},
		{"audit size negative", []string{"--audit-max-size", "-1MiB"}, nil, `"-1MiB" is not a size`},
		{"cert without key", []string{"--tls-cert", "c.pem"}, nil, "--tls-cert and --tls-key go together: give both or neither"},
		{"key without cert", []string{"--tls-key", "k.pem"}, nil, "--tls-cert and --tls-key go together: give both or neither"},
		{"cert with tls off", []string{"--tls", "off", "--tls-cert", "c.pem", "--tls-key", "k.pem"}, nil, "--tls-cert and --tls-key need TLS, but --tls is off"},
		{"port too big", []string{"--port", "70000"}, nil, "--port must be between 0 and 65535, not 70000"},
		{"port negative", []string{"--port", "-1"}, nil, "--port must be between 0 and 65535, not -1"},
		{"port not a number", []string{"--port", "http"}, nil, `daemon: invalid value "http" for flag --port`},
		{"unknown flag", []string{"--colour"}, nil, `daemon: unknown flag "--colour"`},
		{"stray argument", []string{"now"}, nil, "daemon: wrong number of arguments (1)"},
		{"malformed api token flag", []string{"--api-token", "secret"}, nil, "is not nxa-api_ followed by 64 lower-case hex characters"},
		{"malformed api token env", nil, []string{"HELYOS_API_TOKEN=nxa-api_ABC"}, "is not nxa-api_ followed by 64 lower-case hex characters"},
		{"join token as api token", []string{"--api-token", "nxa_" + strings.Repeat("a", 64)}, nil, "is not nxa-api_ followed by 64 lower-case hex characters"},
		{"advertise a URL", []string{"--advertise-addr", "https://cluster.example.com"}, nil, `--advertise-addr "https://cluster.example.com": want a host name or IP address, optionally with :PORT, and no scheme or path` + "\nhelyos: hint: give the name"},
		{"advertise with a path", []string{"--advertise-addr", "cluster.example.com/api"}, nil, `--advertise-addr "cluster.example.com/api": want a host name`},
		{"advertise with a user", []string{"--advertise-addr", "me@cluster.example.com"}, nil, `--advertise-addr "me@cluster.example.com": want a host name`},
		{"advertise an empty port", []string{"--advertise-addr", "cluster.example.com:"}, nil, `--advertise-addr "cluster.example.com:": want a host name`},
		{"advertise port zero", []string{"--advertise-addr", "cluster.example.com:0"}, nil, `--advertise-addr "cluster.example.com:0": want a host name`},
		{"advertise port too big", []string{"--advertise-addr", "10.0.0.5:70000"}, nil, `--advertise-addr "10.0.0.5:70000": want a host name`},
		{"advertise double brackets", []string{"--advertise-addr", "[[::1]]"}, nil, `--advertise-addr "[[::1]]": want a host name`},
		{"advertise an IPv6 zone", []string{"--advertise-addr", "fe80::1%eth0"}, nil, `--advertise-addr "fe80::1%eth0": want a host name`},
		{"advertise a label ending in -", []string{"--advertise-addr", "cluster-.example.com"}, nil, `want a host name`},
		{"advertise a token", []string{"--advertise-addr", "nxa-api_" + strings.Repeat("a", 64)}, nil, `--advertise-addr "nxa-api_<redacted>"`},
		{"san a token", []string{"--tls-san", "nxa-api_" + strings.Repeat("a", 64)}, nil, `--tls-san "nxa-api_<redacted>" is not a host name or IP address` + "\nhelyos: hint: give another name"},
		{"san a URL", []string{"--tls-san", "ok.example.com", "--tls-san", "https://x.example.com"}, nil, `--tls-san "https://x.example.com" is not`},
		{"san empty", []string{"--tls-san", ""}, nil, `--tls-san "" is not`},
		{"san for a shell", []string{"--tls-san", "a$(id).example.com"}, nil, `--tls-san "a$(id).example.com" is not`},
		{"upper-case api token", []string{"--api-token", "nxa-api_" + strings.Repeat("AB", 32)}, nil, "is not nxa-api_ followed by 64 lower-case hex characters"},
		{"max conns zero", []string{"--max-conns", "0"}, nil, "--max-conns must be at least 1, not 0"},
		{"max conns negative", []string{"--max-conns", "-1"}, nil, "--max-conns must be at least 1, not -1"},
		{"max conns not a number", []string{"--max-conns", "many"}, nil, `daemon: invalid value "many" for flag --max-conns`},
		{"max conns per ip zero", []string{"--max-conns-per-ip", "0"}, nil, "--max-conns-per-ip must be at least 1, not 0"},
		{"max conns per ip negative", []string{"--max-conns-per-ip", "-5"}, nil, "--max-conns-per-ip must be at least 1, not -5"},
		{"max conns per ip not a number", []string{"--max-conns-per-ip", "1k"}, nil, `daemon: invalid value "1k" for flag --max-conns-per-ip`},
		{"unknown log level", []string{"--log-level", "trace"}, nil, `--log-level must be info or debug, not "trace"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			home := t.TempDir()
			res := runRefusedDaemon(t, home, c.env, c.args...)
			if res.code != 2 || !strings.Contains(res.stderr, c.want) {
				t.Fatalf("exit %d, stderr %q; want exit 2 and %q", res.code, res.stderr, c.want)
			}
			for _, v := range append(c.args, c.env...) {
				if v = strings.TrimPrefix(v, "HELYOS_API_TOKEN="); (v == "secret" || strings.HasPrefix(v, "nxa")) && strings.Contains(res.stdout+res.stderr, v) {
					t.Error("the error repeats the rejected token")
				}
			}
			if files := filesUnder(t, home); len(files) != 0 {
				t.Errorf("a usage error wrote %v", files)
			}
		})
	}
}

func TestHelyosdName(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	link := filepath.Join(dir, "helyosd")
	if err := os.Symlink(helyosBin, link); err != nil {
		t.Fatal(err)
	}
	res := runHelyos(t, dir, "", nil, "--help")
	if res.code != 0 || !strings.Contains(res.stdout, "helyos daemon") {
		t.Fatalf("helyos --help: %d %q", res.code, res.stdout)
	}
	cmd := exec.Command(link, "--tls", "bogus")
	cmd.Env = testEnv(dir)
	out, _ := cmd.CombinedOutput()
	if cmd.ProcessState.ExitCode() != 2 || !strings.Contains(string(out), "--tls must be auto, on or off") {
		t.Fatalf("helyosd did not run the daemon's flag parsing: %d %s", cmd.ProcessState.ExitCode(), out)
	}
}

// TestTLSCertificate checks the served chain with a client that trusts only
// the daemon's CA, the SANs, and that other names and CAs are refused.
func TestTLSCertificate(t *testing.T) {
	t.Parallel()
	d := tlsDaemon(t, "--advertise-addr", "helyos.test", "--tls-san", "10.1.2.3", "--tls-san", "Extra.Test")
	other := tlsDaemon(t)
	hostname, _ := os.Hostname()

	dial := func(serverName string, roots *x509.CertPool) (*tls.ConnectionState, error) {
		conn, err := tls.Dial("tcp", "127.0.0.1:"+d.port, &tls.Config{ServerName: serverName, RootCAs: roots})
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		st := conn.ConnectionState()
		return &st, nil
	}
	st, err := dial("helyos.test", d.caPool(t))
	if err != nil {
		t.Fatalf("pinned client refused the daemon: %v", err)
	}
	leaf := st.PeerCertificates[0]
	wantDNS := []string{"extra.test", "helyos.test", "localhost", strings.ToLower(hostname)}
	for _, n := range wantDNS {
		if !slices.Contains(leaf.DNSNames, n) {
			t.Errorf("SANs %v lack %q", leaf.DNSNames, n)
		}
	}
	var ips []string
	for _, ip := range leaf.IPAddresses {
		ips = append(ips, ip.String())
	}
	for _, ip := range []string{"127.0.0.1", "::1", "10.1.2.3"} {
		if !slices.Contains(ips, ip) {
			t.Errorf("IP SANs %v lack %s", ips, ip)
		}
	}
	if st.Version < tls.VersionTLS12 {
		t.Errorf("negotiated TLS version %x", st.Version)
	}
	for _, name := range []string{"localhost", "127.0.0.1", "extra.test"} {
		if _, err := dial(name, d.caPool(t)); err != nil {
			t.Errorf("name %s refused: %v", name, err)
		}
	}
	var hostErr x509.HostnameError
	if _, err := dial("not-mine.test", d.caPool(t)); !errors.As(err, &hostErr) {
		t.Errorf("a name outside the SANs: err = %v, want a hostname error", err)
	}
	var unknown x509.UnknownAuthorityError
	if _, err := dial("localhost", other.caPool(t)); !errors.As(err, &unknown) {
		t.Errorf("another daemon's CA: err = %v, want unknown authority", err)
	}
	// A client that really offers TLS 1.0 and 1.1 (Go's default floor is
	// 1.2, so it would refuse on its own and send the server nothing) gets
	// the server's protocol_version alert.
	old := &tls.Config{RootCAs: d.caPool(t), ServerName: "localhost", MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}
	if conn, err := tls.Dial("tcp", "127.0.0.1:"+d.port, old); err == nil {
		conn.Close()
		t.Error("TLS 1.1 was accepted")
	} else if !strings.Contains(err.Error(), "remote error: tls: protocol version not supported") {
		t.Errorf("TLS 1.1 client: %v, want the server's protocol_version alert", err)
	}
}

func TestCAEndpointAndFingerprint(t *testing.T) {
	t.Parallel()
	d := tlsDaemon(t)
	code, _, body := d.do(t, "GET", "/api/v1/ca", "", "")
	if code != 200 {
		t.Fatalf("GET /api/v1/ca = %d %s", code, body)
	}
	var ca struct{ PEM, SHA256 string }
	if err := json.Unmarshal([]byte(body), &ca); err != nil {
		t.Fatal(err)
	}
	block, rest := pem.Decode([]byte(ca.PEM))
	if block == nil || block.Type != "CERTIFICATE" || len(rest) != 0 {
		t.Fatalf("pem field holds something other than one CERTIFICATE block: %q", ca.PEM)
	}
	sum := sha256.Sum256(block.Bytes)
	want := hex.EncodeToString(sum[:])
	if strings.ReplaceAll(ca.SHA256, ":", "") != want || len(ca.SHA256) != 95 {
		t.Errorf("sha256 = %s, want colon pairs of %s", ca.SHA256, want)
	}
	if d.fp != ca.SHA256 {
		t.Errorf("login hint fingerprint %s differs from /api/v1/ca %s", d.fp, ca.SHA256)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil || !cert.IsCA || cert.Subject.CommonName != "helyos CA" {
		t.Fatalf("CA certificate: %v %+v", err, cert)
	}
	if years := cert.NotAfter.Sub(cert.NotBefore).Hours() / 24 / 365; years < 9.9 || years > 10.1 {
		t.Errorf("CA validity %.1f years, want about 10", years)
	}
	if key, ok := cert.PublicKey.(*ecdsa.PublicKey); !ok || key.Curve != elliptic.P256() {
		t.Errorf("CA key is %T, want ECDSA P-256", cert.PublicKey)
	}
	if !strings.Contains(d.out.String(), "helyos login https://") || !strings.Contains(d.out.String(), "--ca-fingerprint "+ca.SHA256) {
		t.Errorf("no pasteable login hint in the daemon's output:\n%s", d.out.String())
	}
	t.Run("openssl agrees", func(t *testing.T) {
		out, code := runTool(t, "openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", filepath.Join(d.dataDir, caCertFile))
		if got := strings.TrimSpace(out); code != 0 || !strings.EqualFold(got, "sha256 Fingerprint="+ca.SHA256) {
			t.Errorf("openssl says %q (exit %d), we say %s", got, code, ca.SHA256)
		}
	})

	plain := httpDaemon(t)
	code, _, body = plain.do(t, "GET", "/api/v1/ca", "", "")
	if code != 404 || !strings.Contains(body, `"error"`) {
		t.Errorf("GET /api/v1/ca with TLS off = %d %s, want 404 with an error", code, body)
	}
}

func TestLoginHintHost(t *testing.T) {
	t.Parallel()
	hostname, _ := os.Hostname()
	const noEffect = "warning: --advertise-addr has no effect on who can connect: the daemon listens on loopback (127.0.0.1) only; bind a reachable address with --host\n"
	cases := []struct {
		name string
		args []string
		want string // PORT is the port the daemon bound
		warn bool   // the loopback warning, once
	}{
		{"advertise wins", []string{"--host", "0.0.0.0", "--advertise-addr", "cluster.test"}, "log in from another machine with: helyos login https://cluster.test:PORT", false},
		{"advertise a port", []string{"--host", "0.0.0.0", "--advertise-addr", "cluster.test:7443"}, "helyos login https://cluster.test:7443", false},
		{"advertise IPv6 with a port", []string{"--host", "0.0.0.0", "--advertise-addr", "[2001:db8::5]:7443"}, "helyos login https://[2001:db8::5]:7443", false},
		{"advertise IPv6", []string{"--host", "0.0.0.0", "--advertise-addr", "2001:db8::5"}, "helyos login https://[2001:db8::5]:PORT", false},
		{"loopback is not for other machines", []string{"--host", "127.0.0.1", "--tls", "on"}, "log in with: helyos login https://127.0.0.1:PORT", false},
		{"advertise on loopback warns", []string{"--host", "127.0.0.1", "--tls", "on", "--advertise-addr", "localhost"}, "log in with: helyos login https://localhost:PORT", true},
		{"wildcard uses the hostname", []string{"--host", "0.0.0.0"}, "log in from another machine with: helyos login https://" + hostname + ":PORT", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			d := startDaemon(t, t.TempDir(), c.args)
			out := d.out.String()
			if want := strings.ReplaceAll(c.want, "PORT", d.port); !strings.Contains(out, want+" --ca-fingerprint "+d.fp) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
			if n := strings.Count(out, "has no effect on who can connect"); (c.warn && (n != 1 || !strings.Contains(out, noEffect))) || (!c.warn && n != 0) {
				t.Errorf("loopback warning %d times, want it: %v\n%s", n, c.warn, out)
			}
		})
	}
}

// TestBringYourOwnCertificate: --tls-cert/--tls-key mean HTTPS with that
// certificate, also on a loopback bind under the default --tls auto, and no
// self-signed CA is made.
func TestBringYourOwnCertificate(t *testing.T) {
	t.Parallel()
	// A CA and leaf made by our own code, standing in for an operator's.
	dir := t.TempDir()
	ca, err := loadOrCreateCA(dir, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.issueServerCert(dir, []string{"127.0.0.1", "localhost"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	for _, tlsMode := range []string{"auto", "on"} {
		t.Run(tlsMode, func(t *testing.T) {
			t.Parallel()
			d := startDaemon(t, t.TempDir(), []string{"--tls", tlsMode, "--tls-cert", filepath.Join(dir, serverCertFile), "--tls-key", filepath.Join(dir, serverKeyFile)})
			if !strings.HasPrefix(d.url, "https://") {
				t.Errorf("--tls %s with --tls-cert serves %s", tlsMode, d.url)
			}
			conn, err := tls.Dial("tcp", "127.0.0.1:"+d.port, &tls.Config{RootCAs: pool})
			if err != nil {
				t.Fatalf("the operator's certificate was not served: %v", err)
			}
			defer conn.Close()
			if !conn.ConnectionState().PeerCertificates[0].Equal(leaf.Leaf) {
				t.Errorf("the daemon served another certificate than --tls-cert")
			}
			conn.Write([]byte("GET /api/v1/ca HTTP/1.1\r\nHost: localhost\r\n\r\n"))
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil || resp.StatusCode != http.StatusNotFound {
				t.Errorf("GET /api/v1/ca with an operator certificate = %v %v, want 404", resp, err)
			}
			if _, err := os.Stat(filepath.Join(d.dataDir, caCertFile)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a self-signed CA was made although the operator brought a certificate")
			}
			// login: the system's CAs check a certificate of the operator's
			// own (here $SSL_CERT_FILE stands in for them); with no trust, or
			// a --ca-fingerprint to match, it is refused with a way out.
			server, trusted := "https://localhost:"+d.port, []string{"SSL_CERT_FILE=" + filepath.Join(dir, caCertFile)}
			for _, tc := range []struct {
				env   []string
				flags []string
				code  int
				say   string
			}{
				{nil, nil, 1, "add --ca-file PEM for a certificate of your own"},
				{trusted, []string{"--ca-fingerprint", strings.Repeat("ab", 32)}, 1, "drop --ca-fingerprint"},
				{trusted, nil, 0, "the system's trusted CAs check it"},
			} {
				home := t.TempDir()
				args := append([]string{"login", server, "--token-stdin"}, tc.flags...)
				r := runHelyos(t, home, d.token+"\n", tc.env, args...)
				checkOutputShapes(t, args, r)
				if r.code != tc.code || !strings.Contains(r.stderr, tc.say) {
					t.Errorf("login %v (%v): exit %d, want %d saying %q:\n%s", tc.flags, tc.env, r.code, tc.code, tc.say, r.stderr)
				}
				if tc.code == 0 && whoamiName(t, home, tc.env) != "bootstrap" {
					t.Errorf("whoami after a login that trusts the system's CAs failed")
				}
			}
		})
	}
}

// TestRestartKeepsState: the CA, the tokens and the revocations survive a
// restart, and no token is printed the second time.
func TestRestartKeepsState(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	d := startDaemon(t, home, []string{"--tls", "on"})
	alice := d.createToken(t, d.token, "alice", 0)
	bob := d.createToken(t, d.token, "bob", 0)
	if code, _, _ := d.do(t, "DELETE", "/api/v1/tokens/bob", d.token, ""); code != 204 {
		t.Fatal("revoke bob")
	}
	if code, _, _ := d.do(t, "GET", "/api/v1/whoami", alice, ""); code != 200 {
		t.Fatal("alice refused")
	}
	d.stop(t)
	serving := mustReadFile(t, filepath.Join(d.dataDir, serverCertFile))

	d2 := startDaemon(t, home, []string{"--tls", "on"})
	if d2.fp != d.fp {
		t.Errorf("CA changed across restart: %s then %s", d.fp, d2.fp)
	}
	if strings.Contains(d2.out.String(), "HELYOS_API_TOKEN=") {
		t.Errorf("second start printed a token:\n%s", d2.out.String())
	}
	if again := mustReadFile(t, filepath.Join(d.dataDir, serverCertFile)); !bytes.Equal(again, serving) {
		t.Error("serving certificate re-issued although nothing changed")
	}
	for _, c := range []struct {
		who   string
		token string
		want  int
	}{{"bootstrap", d.token, 200}, {"alice", alice, 200}, {"revoked bob", bob, 401}} {
		if code, _, _ := d2.do(t, "GET", "/api/v1/whoami", c.token, ""); code != c.want {
			t.Errorf("%s after restart: %d, want %d", c.who, code, c.want)
		}
	}
	var stored tokenFile
	if err := json.Unmarshal(mustReadFile(t, filepath.Join(d.dataDir, tokenStoreFile)), &stored); err != nil {
		t.Fatal(err)
	}
	for _, r := range stored.Tokens {
		if r.Name == "alice" && r.LastUsedAt == nil {
			t.Error("last_used_at of alice was not flushed at shutdown")
		}
	}
}

// TestDataDirInUse: a second daemon on a data dir another one serves from
// refuses to start and touches nothing; once the first stops, it starts.
// Without the lock both would keep their own token store, and a revoke made
// through one would not reach the other.
func TestDataDirInUse(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	d := startDaemon(t, home, []string{"--tls", "on"})
	storePath := filepath.Join(d.dataDir, tokenStoreFile)
	before := mustReadFile(t, storePath)
	for _, args := range [][]string{{"--port", "0"}, {"--port", "0", "--tls", "off"}} {
		res := runRefusedDaemon(t, home, nil, args...)
		if res.code != 1 || !strings.Contains(res.stderr, "data dir "+d.dataDir+" is in use by another helyos daemon") ||
			!strings.Contains(res.stderr, "give this one its own --data-dir") {
			t.Fatalf("%v: exit %d, stderr:\n%s", args, res.code, res.stderr)
		}
		if strings.Contains(res.stderr, "listening") || strings.Contains(res.stderr, "HELYOS_API_TOKEN") {
			t.Errorf("%v: the refused daemon went on:\n%s", args, res.stderr)
		}
	}
	if after := mustReadFile(t, storePath); !bytes.Equal(after, before) {
		t.Error("the refused daemon changed the token store")
	}
	if code, _, _ := d.do(t, "GET", "/api/v1/whoami", d.token, ""); code != 200 {
		t.Errorf("the first daemon stopped answering: %d", code)
	}
	d.stop(t)
	d2 := startDaemon(t, home, []string{"--tls", "on"})
	if code, _, _ := d2.do(t, "GET", "/api/v1/whoami", d.token, ""); code != 200 {
		t.Errorf("restart after the first daemon stopped: whoami %d", code)
	}
}

// TestAdvertiseAddrReissuesUnderSameCA: a pinned client keeps working.
func TestAdvertiseAddrReissuesUnderSameCA(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	d := startDaemon(t, home, []string{"--tls", "on"})
	pool := d.caPool(t)
	d.stop(t)
	d2 := startDaemon(t, home, []string{"--tls", "on", "--advertise-addr", "moved.test"})
	if d2.fp != d.fp {
		t.Fatalf("CA changed: %s then %s", d.fp, d2.fp)
	}
	conn, err := tls.Dial("tcp", "127.0.0.1:"+d2.port, &tls.Config{ServerName: "moved.test", RootCAs: pool})
	if err != nil {
		t.Fatalf("client pinned before the change refused the re-issued certificate: %v", err)
	}
	conn.Close()
}

func TestTokenLifecycleOverHTTP(t *testing.T) {
	t.Parallel()
	d := tlsDaemon(t)
	before := time.Now().Truncate(time.Second)
	code, _, body := d.do(t, "POST", "/api/v1/tokens", d.token, `{"name":"ci","ttl_secs":3600,"scope":"admin"}`)
	after := time.Now()
	if code != 201 {
		t.Fatalf("create: %d %s", code, body)
	}
	var created map[string]any
	json.Unmarshal([]byte(body), &created)
	for _, k := range []string{"name", "scope", "created_at", "expires_at", "last_used_at", "token", "login"} {
		if _, ok := created[k]; !ok {
			t.Errorf("created record lacks %q: %s", k, body)
		}
	}
	// How to log in from elsewhere: the address clients dial (the bind host
	// here) and the CA to pin.
	if login, _ := json.Marshal(created["login"]); string(login) != `{"ca_sha256":"`+d.fp+`","server":"https://127.0.0.1:`+d.port+`"}` {
		t.Errorf("login = %s", login)
	}
	secret, _ := created["token"].(string)
	if _, ok := parseAPIToken(secret); !ok {
		t.Fatalf("secret %q is not an API token", secret)
	}
	exp, err := time.Parse(time.RFC3339, created["expires_at"].(string))
	if err != nil || exp.Before(before.Add(time.Hour)) || exp.After(after.Add(time.Hour)) || exp.Location() != time.UTC {
		t.Errorf("expires_at = %v (%v)", created["expires_at"], err)
	}

	if code, _, body := d.do(t, "POST", "/api/v1/tokens", d.token, `{"name":"ci"}`); code != 409 || !strings.Contains(body, `already exists`) {
		t.Errorf("duplicate name: %d %s", code, body)
	}
	code, _, body = d.do(t, "GET", "/api/v1/whoami", secret, "")
	if code != 200 {
		t.Fatalf("whoami with new token: %d %s", code, body)
	}
	var who map[string]any
	json.Unmarshal([]byte(body), &who)
	if who["name"] != "ci" || who["scope"] != "admin" || who["last_used_at"] == nil {
		t.Errorf("whoami = %s", body)
	}
	code, _, body = d.do(t, "GET", "/api/v1/tokens", d.token, "")
	if code != 200 || strings.Contains(body, "argon2") || strings.Contains(body, "lookup") || strings.Contains(body, "nxa-api_") {
		t.Errorf("list: %d %s", code, body)
	}
	var list []map[string]any
	json.Unmarshal([]byte(body), &list)
	if len(list) != 2 || list[0]["name"] != "bootstrap" || list[1]["name"] != "ci" {
		t.Errorf("list = %s", body)
	}
	if code, _, _ := d.do(t, "DELETE", "/api/v1/tokens/ci", d.token, ""); code != 204 {
		t.Errorf("revoke: %d", code)
	}
	if code, hdr, body := d.do(t, "GET", "/api/v1/whoami", secret, ""); code != 401 || hdr.Get("WWW-Authenticate") != "Bearer" {
		t.Errorf("revoked token on the next request: %d %s", code, body)
	} else {
		jsonEqual(t, body, unauthorizedBody)
	}
	if code, _, body := d.do(t, "DELETE", "/api/v1/tokens/ci", d.token, ""); code != 404 || !strings.Contains(body, `no active token named \"ci\"`) {
		t.Errorf("second revoke: %d %s", code, body)
	}
	if code, _, body := d.do(t, "POST", "/api/v1/tokens", d.token, `{"name":"ci"}`); code != 201 {
		t.Errorf("a revoked token's name is free again: %d %s", code, body)
	}

	waitStatus(t, d, d.createToken(t, d.token, "short", 1), 401)
}

// TestBearerHeaderTable: every malformed or wrong credential gets the same
// 401; the scheme matches without regard to case.
func TestBearerHeaderTable(t *testing.T) {
	t.Parallel()
	d := tlsDaemon(t)
	valid := d.token
	cases := []struct {
		name    string
		headers []string
		want    int
	}{
		{"no header", nil, 401},
		{"empty", []string{""}, 401},
		{"scheme only", []string{"Bearer"}, 401},
		{"scheme and space", []string{"Bearer "}, 401},
		{"basic scheme", []string{"Basic " + valid}, 401},
		{"token without scheme", []string{valid}, 401},
		{"lower-case scheme", []string{"bearer " + valid}, 200},
		{"upper-case scheme", []string{"BEARER " + valid}, 200},
		{"two spaces", []string{"Bearer  " + valid}, 200},
		{"trailing junk", []string{"Bearer " + valid + " x"}, 401},
		{"tab inside", []string{"Bearer " + valid + "\tx"}, 401},
		{"token too long", []string{"Bearer " + valid + "0"}, 401},
		{"token too short", []string{"Bearer " + valid[:len(valid)-1]}, 401},
		{"upper-case hex", []string{"Bearer " + strings.ToUpper(valid[:8]) + strings.ToUpper(valid[8:])}, 401},
		{"join token prefix", []string{"Bearer nxa_" + valid[8:]}, 401},
		{"unknown token", []string{"Bearer nxa-api_" + strings.Repeat("0", 64)}, 401},
		{"right prefix wrong secret", []string{"Bearer " + valid[:20] + strings.Repeat("0", len(valid)-20)}, 401},
		{"two headers", []string{"Bearer " + valid, "Bearer " + valid}, 401},
	}
	client := d.client(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", d.url+"/api/v1/whoami", nil)
			for _, h := range c.headers {
				req.Header.Add("Authorization", h)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body bytes.Buffer
			if _, err := body.ReadFrom(resp.Body); err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != c.want {
				t.Fatalf("status %d, want %d (%s)", resp.StatusCode, c.want, body.String())
			}
			if c.want == 401 {
				if resp.Header.Get("WWW-Authenticate") != "Bearer" {
					t.Errorf("WWW-Authenticate = %q", resp.Header.Get("WWW-Authenticate"))
				}
				jsonEqual(t, body.String(), unauthorizedBody)
			}
		})
	}
}

func TestRequestBodyTable(t *testing.T) {
	t.Parallel()
	d := httpDaemon(t)
	big := `{"name":"` + strings.Repeat("a", maxBodyBytes) + `"}`
	cases := []struct {
		name, body string
		want       int
		msg        string
	}{
		{"empty", "", 400, "request body is empty"},
		{"broken JSON", `{"name":`, 400, "invalid JSON body"},
		{"not an object", `["a"]`, 400, "invalid JSON body"},
		{"unknown field", `{"name":"x","admin":true}`, 400, `unknown field \"admin\"`},
		{"wrong type", `{"name":5}`, 400, "invalid JSON body"},
		{"fractional ttl", `{"name":"x","ttl_secs":1.5}`, 400, "invalid JSON body"},
		{"two values", `{"name":"x"} {"name":"y"}`, 400, "more than one JSON value"},
		{"trailing garbage", `{"name":"x"} x`, 400, "more than one JSON value"},
		{"negative ttl", `{"name":"x","ttl_secs":-1}`, 400, "ttl_secs (--ttl) must be between 0"},
		{"huge ttl", `{"name":"x","ttl_secs":9223372036854775807}`, 400, "ttl_secs (--ttl) must be between 0"},
		{"bad name", `{"name":"a b"}`, 400, `token name \"a b\" is invalid`},
		{"empty name", `{}`, 400, `token name \"\" is invalid`},
		{"bad scope", `{"name":"x","scope":"a/b"}`, 400, `scope \"a/b\" is not valid: use admin or read`},
		{"scope in capitals", `{"name":"x","scope":"READ"}`, 400, `scope \"READ\" is not valid`},
		{"allow_from not a list", `{"name":"x","allow_from":"10.0.0.0/8"}`, 400, "invalid JSON body"},
		{"allow_from bare address", `{"name":"x","allow_from":["192.0.2.7"]}`, 400, `allow_from (--allow-from) \"192.0.2.7\" is not a CIDR such as`},
		{"allow_from mapped IPv4", `{"name":"x","allow_from":["::ffff:10.0.0.0/104"]}`, 400, "is not a CIDR"},
		{"allow_from zone", `{"name":"x","allow_from":["fe80::1%eth0/64"]}`, 400, "is not a CIDR"},
		{"allow_from token redacted", `{"name":"x","allow_from":["nxa-api_0123456789abcdef"]}`, 400, `\"nxa-api_\u003credacted\u003e\" is not a CIDR`},
		{"allow_from too many", `{"name":"x","allow_from":[` + strings.Repeat(`"10.0.0.0/8",`, maxAllowFrom) + `"10.0.0.0/8"]}`, 400, "at most 32 are allowed"},
		{"too large", big, 413, "request body is larger than 1048576 bytes"},
		{"case-variant field", `{"name":"x","Name":"y"}`, 400, `unknown field \"Name\": fields are spelled in lower case`},
		{"upper-case field", `{"NAME":"x"}`, 400, `unknown field \"NAME\": fields are spelled in lower case`},
		{"field that folds to a known one", `{"name":"x","ſcope":"admin"}`, 400, `unknown field \"ſcope\": fields are spelled in lower case`},
		{"repeated field", `{"name":"a","name":"b"}`, 400, `field \"name\" appears more than once`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			code, _, body := d.do(t, "POST", "/api/v1/tokens", d.token, c.body)
			if code != c.want || !strings.Contains(body, c.msg) {
				t.Fatalf("%d %s; want %d with %q", code, body, c.want, c.msg)
			}
			var e struct{ Error string }
			if json.Unmarshal([]byte(body), &e) != nil || e.Error == "" {
				t.Errorf("error body is not {\"error\": ...}: %s", body)
			}
		})
	}
}

func TestRoutes(t *testing.T) {
	t.Parallel()
	d := httpDaemon(t)
	cases := []struct {
		name, method, path string
		auth               bool
		want               int
		body               string
	}{
		{"health", "GET", "/health", false, 200, "ok\n"},
		{"version", "GET", "/api/v1/version", false, 200, `{"version":"` + binVersion + `","api":"v1"}`},
		{"whoami anonymous", "GET", "/api/v1/whoami", false, 401, unauthorizedBody},
		{"tokens anonymous", "GET", "/api/v1/tokens", false, 401, unauthorizedBody},
		{"create anonymous", "POST", "/api/v1/tokens", false, 401, unauthorizedBody},
		{"revoke anonymous", "DELETE", "/api/v1/tokens/bootstrap", false, 401, unauthorizedBody},
		{"unknown api path anonymous", "GET", "/api/v1/deployments", false, 401, unauthorizedBody},
		{"api root anonymous", "GET", "/api/v1", false, 401, unauthorizedBody},
		{"unknown api path authenticated", "GET", "/api/v1/deployments", true, 404, `{"error":"not found"}`},
		{"wrong method authenticated", "PUT", "/api/v1/whoami", true, 404, `{"error":"not found"}`},
		{"unknown path", "GET", "/admin", false, 404, `{"error":"not found"}`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			token := ""
			if c.auth {
				token = d.token
			}
			code, hdr, body := d.do(t, c.method, c.path, token, "")
			if code != c.want {
				t.Fatalf("%s %s = %d %s, want %d", c.method, c.path, code, body, c.want)
			}
			if strings.HasPrefix(c.body, "{") {
				jsonEqual(t, body, c.body)
				if hdr.Get("Content-Type") != "application/json" {
					t.Errorf("Content-Type = %q", hdr.Get("Content-Type"))
				}
			} else if body != c.body {
				t.Errorf("body = %q, want %q", body, c.body)
			}
		})
	}
}

// TestAPITokenFlag: a given token is accepted, a new one replaces the old
// bootstrap token, a revoked one stays revoked.
func TestAPITokenFlag(t *testing.T) {
	t.Parallel()
	const first = "nxa-api_1111111111111111111111111111111111111111111111111111111111111111"
	const second = "nxa-api_2222222222222222222222222222222222222222222222222222222222222222"
	home := t.TempDir()
	d := startDaemon(t, home, []string{"--api-token", first})
	if d.token != "" || strings.Contains(d.out.String(), first) {
		t.Errorf("a given token was printed:\n%s", d.out.String())
	}
	if code, _, _ := d.do(t, "GET", "/api/v1/whoami", first, ""); code != 200 {
		t.Fatalf("given token refused: %d", code)
	}
	d.stop(t)

	d = startDaemon(t, home, nil, "HELYOS_API_TOKEN="+second)
	if code, _, _ := d.do(t, "GET", "/api/v1/whoami", second, ""); code != 200 {
		t.Errorf("new given token refused: %d", code)
	}
	if code, _, _ := d.do(t, "GET", "/api/v1/whoami", first, ""); code != 401 {
		t.Errorf("replaced bootstrap token still accepted: %d", code)
	}
	d.createToken(t, second, "other-admin", 0) // the last admin is not revoked
	if code, _, _ := d.do(t, "DELETE", "/api/v1/tokens/bootstrap", second, ""); code != 204 {
		t.Fatalf("revoke: %d", code)
	}
	d.stop(t)

	d = startDaemon(t, home, []string{"--api-token", second})
	if !strings.Contains(d.out.String(), "was revoked or has expired; it stays refused") {
		t.Errorf("no warning for a revoked given token:\n%s", d.out.String())
	}
	if code, _, _ := d.do(t, "GET", "/api/v1/whoami", second, ""); code != 401 {
		t.Errorf("revoked given token accepted again: %d", code)
	}
}

// TestNoSecretsInOutput: the daemon prints the first-run token once and no
// other secret, ever; no answer repeats a token sent to it, whether as the
// bearer, tampered, or where a name belongs; the data dir holds no secret.
func TestNoSecretsInOutput(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	d := startDaemon(t, home, []string{"--tls", "on"})
	if n := strings.Count(d.out.String(), d.token); n != 1 {
		t.Fatalf("first-run token printed %d times", n)
	}
	secrets := []string{d.token}
	for _, name := range []string{"a", "b", "c"} {
		secrets = append(secrets, d.createToken(t, d.token, name, 0))
	}
	d.do(t, "DELETE", "/api/v1/tokens/b", d.token, "")
	answers := map[string][]string{} // what the daemon answered, by where the token went
	ask := func(where, method, path, token, body string) {
		code, hdr, got := d.do(t, method, path, token, body)
		answers[where] = append(answers[where], fmt.Sprintf("%s: %d %v %s", method, code, hdr, got)) // not the path: it may hold the token
	}
	for _, s := range secrets {
		ask("bearer", "GET", "/api/v1/whoami", s, "")
		ask("bearer", "GET", "/api/v1/whoami", s[:len(s)-1]+string("10"[s[len(s)-1]&1]), "") // one hex digit off
		ask("name of a create", "POST", "/api/v1/tokens", d.token, `{"name":"`+s+`"}`)
		ask("name of a revoke", "DELETE", "/api/v1/tokens/"+s, d.token, "")
	}
	d.stop(t)
	d2 := startDaemon(t, home, []string{"--tls", "on"})
	d2.stop(t)
	texts := map[string]string{
		"daemon output":        strings.Replace(d.out.String(), "HELYOS_API_TOKEN="+d.token, "", 1),
		"daemon output, again": d2.out.String(),
	}
	// The daemon's help names $HELYOS_API_TOKEN as the default, never its value.
	if help := runHelyos(t, home, "", []string{"HELYOS_API_TOKEN=" + d.token}, "daemon", "--help"); help.code != 0 || strings.Contains(help.stderr, d.token[8:]) {
		t.Errorf("daemon --help with $HELYOS_API_TOKEN set: exit %d\n%s", help.code, help.stderr)
	}
	for _, f := range filesUnder(t, d.dataDir) {
		texts["data dir: "+f] = string(mustReadFile(t, filepath.Join(d.dataDir, f)))
	}
	for where, got := range answers {
		texts["answers, token as "+where] = strings.Join(got, "\n")
	}
	for name, text := range texts {
		t.Run(name, func(t *testing.T) {
			for _, s := range secrets {
				if strings.Contains(text, secretPart(s)) {
					t.Errorf("a token secret is in:\n%s", text)
				}
			}
		})
	}
}

func TestFileModes(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	d := startDaemon(t, home, []string{"--tls", "on"})
	d.createToken(t, d.token, "x", 0)
	if m := permOf(t, d.dataDir); m != 0o700 {
		t.Errorf("data dir mode %o", m)
	}
	if m := permOf(t, filepath.Join(home, ".helyos")); m != 0o700 {
		t.Errorf("~/.helyos mode %o", m)
	}
	files := filesUnder(t, d.dataDir)
	for _, want := range []string{caCertFile, caKeyFile, serverCertFile, serverKeyFile, tokenStoreFile, auditFileName} {
		if !slices.Contains(files, want) {
			t.Errorf("data dir lacks %s: %v", want, files)
		}
	}
	for _, f := range files {
		if m := permOf(t, filepath.Join(d.dataDir, f)); m != 0o600 {
			t.Errorf("%s mode %o, want 600", f, m)
		}
	}
	if m := permOf(t, filepath.Join(home, ".helyos", "config.toml")); m != 0o600 {
		t.Errorf("config.toml mode %o", m)
	}
	// A data dir made too open by hand is closed again at start.
	d.stop(t)
	os.Chmod(d.dataDir, 0o755)
	startDaemon(t, home, []string{"--tls", "on"})
	if m := permOf(t, d.dataDir); m != 0o700 {
		t.Errorf("data dir mode after restart %o", m)
	}
}

// TestLocalContextNeverOverwritten: the daemon writes the local context only
// when there is no config file.
// TestLocalContextNeverOverwritten: a first start adds a "local" context to
// a config that has none, keeping the user's current context, and never
// touches an existing "local": it says in one line how to reach this daemon.
func TestLocalContext(t *testing.T) {
	t.Parallel()
	const prod = "\n[context.prod]\nserver = \"https://prod.test:6443\"\n"
	for _, tc := range []struct {
		name, config, current string
		contexts              []string
		log                   string // PORT is the daemon's port
	}{
		{"no contexts", "# mine\n", "local", []string{"local"}, `wrote CLI context "local"`},
		{"another context is current", "current-context = \"prod\"\n" + prod, "prod", []string{"prod", "local"},
			`added CLI context "local" to CONFIG; the current context stays "prod": reach this daemon with 'helyos --context local COMMAND'`},
		{"the only context stays active", prod, "prod", []string{"prod", "local"}, `the current context stays "prod"`},
		{"local is elsewhere", "current-context = \"local\"\n\n[context.local]\nserver = \"http://localhost:6443\"\ntoken = \"nxa-api_x\"\n", "local", []string{"local"},
			`CLI context "local" in CONFIG is for http://localhost:6443, not this daemon, and is left as it is; reach this daemon by logging in with its token: helyos login http://localhost:PORT --name local-PORT` + "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			home := t.TempDir()
			path := filepath.Join(home, ".helyos", "config.toml")
			os.MkdirAll(filepath.Dir(path), 0o700)
			os.WriteFile(path, []byte(tc.config), 0o600)
			d := startDaemon(t, home, nil)
			cfg, err := loadConfig(path)
			if err != nil || cfg.CurrentContext != tc.current || strings.Join(cfg.Names(), ",") != strings.Join(tc.contexts, ",") {
				t.Fatalf("config: %v, current %q, contexts %v", err, cfg.CurrentContext, cfg.Names())
			}
			if want := strings.NewReplacer("PORT", d.port, "CONFIG", path).Replace(tc.log); strings.Count(d.out.String(), want) != 1 {
				t.Errorf("the daemon did not say once %q:\n%s", want, d.out.String())
			}
			local, kept := cfg.Context("local"), tc.name == "local is elsewhere"
			if got, _ := os.ReadFile(path); kept && string(got) != tc.config {
				t.Errorf("an existing local was rewritten:\n%s", got)
			}
			if !kept && (local.Server != "http://localhost:"+d.port || local.Token != d.token) {
				t.Errorf("local = %+v", local)
			}
			if tc.current != "local" {
				if got := whoamiName(t, home, nil, "--context", "local"); got != "bootstrap" {
					t.Errorf("whoami through the added context = %q", got)
				}
			}
		})
	}

	other := t.TempDir()
	cfgPath := filepath.Join(other, "elsewhere.toml")
	d := startDaemon(t, other, []string{"--tls", "on"}, "HELYOS_CONFIG="+cfgPath)
	cfg, err := loadConfig(cfgPath)
	if err != nil || cfg.CurrentContext != "local" || len(cfg.Contexts) != 1 {
		t.Fatalf("local context at $HELYOS_CONFIG: %v %+v", err, cfg)
	}
	c := cfg.Contexts[0]
	if c.Server != "https://localhost:"+d.port || c.Token != d.token || c.Project != "default" || c.CASHA256 != d.fp || c.CA == "" {
		t.Errorf("local context = %+v", c)
	}

	// Restarted with TLS on another port, a daemon takes along the local
	// context that holds its token, pin included; any other local stays as
	// it is, and every start says how to reach the daemon.
	home := t.TempDir()
	first := startDaemon(t, home, nil)
	first.stop(t)
	moved := startDaemon(t, home, []string{"--tls", "on"})
	if got := whoamiName(t, home, nil); got != "bootstrap" {
		t.Errorf("whoami through local after the restart = %q", got)
	}
	if want := "it now points here, at https://localhost:" + moved.port + " (was http://localhost:" + first.port + ")"; !strings.Contains(moved.out.String(), want) {
		t.Errorf("the restarted daemon did not say %q:\n%s", want, moved.out.String())
	}
	moved.stop(t)
	otherDir := []string{"--data-dir", filepath.Join(home, "other"), "--tls", "on"}
	startDaemon(t, home, otherDir).stop(t)
	again := startDaemon(t, home, otherDir)
	if want := "is for https://localhost:" + moved.port + ", not this daemon, and is left as it is; reach this daemon by logging in with its token: helyos login https://localhost:" +
		again.port + " --ca-fingerprint " + again.fp + " --name local-" + again.port + "\n"; !strings.Contains(again.out.String(), want) {
		t.Errorf("a restarted daemon with another token store did not say %q:\n%s", want, again.out.String())
	}
	if cfg, err := loadConfig(filepath.Join(home, ".helyos", "config.toml")); err != nil || cfg.Context("local").Server != "https://localhost:"+moved.port {
		t.Errorf("another daemon's restart changed local: %v %+v", err, cfg.Context("local"))
	}
}

// TestMetrics: the route and token metrics, valid for promtool. Auth
// failures are one total without a reason (a reason label would tell an
// anonymous caller why a guess failed); --log-level debug logs the reasons.
func TestMetrics(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, t.TempDir(), []string{"--log-level", "debug"})
	gone := d.createToken(t, d.token, "gone", 0)
	d.do(t, "DELETE", "/api/v1/tokens/gone", d.token, "")
	d.do(t, "GET", "/health", "", "")
	d.do(t, "GET", "/api/v1/whoami", d.token, "")
	wrongSecret := d.token[:8+lookupLen] + strings.Repeat("0", 64-lookupLen)
	refused := []string{"", "garbage", "nxa-api_" + strings.Repeat("ab", 32), wrongSecret, gone}
	for _, token := range refused {
		d.do(t, "GET", "/api/v1/whoami", token, "")
	}
	whoamis := 1 + len(refused) + waitStatus(t, d, d.createToken(t, d.token, "brief", 1), 401)
	d.do(t, "DELETE", "/api/v1/tokens/no-such-token-xyz", d.token, "")
	d.do(t, "GET", "/secret-path-abc", "", "")
	code, hdr, body := d.do(t, "GET", "/metrics", "", "")
	if code != 200 || !strings.HasPrefix(hdr.Get("Content-Type"), "text/plain; version=0.0.4") {
		t.Fatalf("GET /metrics = %d %q", code, hdr.Get("Content-Type"))
	}
	for _, want := range []string{
		`helyos_http_requests_total{method="GET",route="GET /health",code="200"} 1`,
		`helyos_http_requests_total{method="DELETE",route="DELETE /api/v1/tokens/{name}",code="404"} 1`,
		fmt.Sprintf(`helyos_http_request_duration_seconds_bucket{route="GET /api/v1/whoami",le="+Inf"} %d`, whoamis),
		fmt.Sprintf("helyos_auth_failures_total %d\n", len(refused)+1),
		`helyos_api_tokens_active 1`,
		`helyos_build_info{version="` + binVersion + `"`,
		`helyos_argon2_runs_total `,
		`helyos_token_cache_misses_total `,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if strings.Contains(body, "reason=") {
		t.Errorf("public metrics tell why tokens were refused:\n%s", body)
	}
	d.stop(t) // the log reaches d.out through a pipe: all of it once the daemon has exited
	for _, reason := range []error{errTokenMissing, errTokenMalformed, errTokenUnknown, errTokenMismatch, errTokenRevoked, errTokenExpired} {
		if !regexp.MustCompile(`debug: refused the bearer token of a request from 127\.0\.0\.1:\d+: ` + reason.Error() + "\n").MatchString(d.out.String()) {
			t.Errorf("the debug log lacks the reason %q:\n%s", reason, d.out.String())
		}
	}
	if strings.Contains(d.out.String(), wrongSecret[8:]) {
		t.Error("the debug log repeats a presented token")
	}
	for _, raw := range []string{"no-such-token-xyz", "secret-path-abc", secretPart(d.token), secretPart(refused[2])} {
		if strings.Contains(body, raw) {
			t.Errorf("metrics carry %q", raw)
		}
	}
	promtool := needTool(t, "promtool")
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s\n%s", err, out, body)
	}
}

// TestMetricsOrder: the series come in the order scrapes have always had,
// whatever order the requests came in: requests by route, method and code
// written end to end (so a route's sub-route comes first), the histogram by
// route alone.
func TestMetricsOrder(t *testing.T) {
	m := newMetrics()
	for _, k := range []requestKey{{"GET", "GET /api/v1/tokens", 401}, {"BREW", "", 404}, {"HEAD", "GET /health", 200},
		{"GET", "GET /api/v1/tokens/{name}", 200}, {"GET", "GET /health", 200}, {"GET", "GET /api/v1/tokens", 200}, {"DELETE", "DELETE /api/v1/tokens/{name}", 404}} {
		m.observe(k.method, k.route, k.code, time.Millisecond)
	}
	var out strings.Builder
	m.write(&out, newTokenStore(filepath.Join(t.TempDir(), tokenStoreFile), nil, time.Now))
	var series []string
	for _, line := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(line, "helyos_http_requests_total{") || strings.HasPrefix(line, "helyos_http_request_duration_seconds_count{") {
			series = append(series, line[:strings.LastIndex(line, " ")])
		}
	}
	want := []string{
		`helyos_http_requests_total{method="DELETE",route="DELETE /api/v1/tokens/{name}",code="404"}`,
		`helyos_http_requests_total{method="GET",route="GET /api/v1/tokens/{name}",code="200"}`,
		`helyos_http_requests_total{method="GET",route="GET /api/v1/tokens",code="200"}`,
		`helyos_http_requests_total{method="GET",route="GET /api/v1/tokens",code="401"}`,
		`helyos_http_requests_total{method="GET",route="GET /health",code="200"}`,
		`helyos_http_requests_total{method="HEAD",route="GET /health",code="200"}`,
		`helyos_http_requests_total{method="other",route="unmatched",code="404"}`,
		`helyos_http_request_duration_seconds_count{route="DELETE /api/v1/tokens/{name}"}`,
		`helyos_http_request_duration_seconds_count{route="GET /api/v1/tokens"}`,
		`helyos_http_request_duration_seconds_count{route="GET /api/v1/tokens/{name}"}`,
		`helyos_http_request_duration_seconds_count{route="GET /health"}`,
		`helyos_http_request_duration_seconds_count{route="unmatched"}`,
	}
	if !slices.Equal(series, want) {
		t.Errorf("series order:\n%s\nwant:\n%s", strings.Join(series, "\n"), strings.Join(want, "\n"))
	}
}

// TestUnmatchedMethodsStayBounded: odd methods do not grow the metrics.
func TestUnmatchedMethodsStayBounded(t *testing.T) {
	t.Parallel()
	d := httpDaemon(t)
	for _, m := range []string{"BREW", "WHEN", "FOO"} {
		d.do(t, m, "/health", "", "")
	}
	_, _, body := d.do(t, "GET", "/metrics", "", "")
	if strings.Contains(body, "BREW") || !strings.Contains(body, `method="other"`) {
		t.Errorf("unknown methods are not folded into \"other\":\n%s", body)
	}
}

// serveInProcess serves the daemon's handler chain with the given timeouts
// on a loopback port until the test ends, calling connState (if any) on
// every connection state change, and returns its address and an admin token.
func serveInProcess(t *testing.T, tm timeouts, connState func(net.Conn, http.ConnState)) (string, string) {
	t.Helper()
	srv, token := newTestServer(t)
	srv.timeouts = tm
	hs := srv.httpServer(srv.logger)
	hs.ConnState = connState
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	return ln.Addr().String(), token
}

// dialUntilClosed connects to addr, sends request, and delivers everything
// the server sent once it closes the connection.
func dialUntilClosed(t *testing.T, addr, request string) (net.Conn, <-chan []byte) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := io.WriteString(conn, request); err != nil {
		t.Fatal(err)
	}
	closed := make(chan []byte, 1)
	go func() {
		got, _ := io.ReadAll(conn) // EOF or a reset: the server hung up
		closed <- got
	}()
	return conn, closed
}

// dribbleUntilClosed writes the next byte of more every few milliseconds, so no
// read on the server waits long, until the server hangs up (a write error
// means it did; closed then says so), and returns what the server sent. A
// server that keeps the connection for a minute fails the test.
func dribbleUntilClosed(t *testing.T, conn net.Conn, closed <-chan []byte, more string) []byte {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for i := 0; ; i++ {
		select {
		case got := <-closed:
			return got
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("still connected after a minute (%d bytes dribbled): the limit did not fire", i)
		}
		if i < len(more) {
			conn.Write([]byte{more[i]})
		}
	}
}

// TestSlowHeadersCutOff: a client that dribbles its headers one byte at a
// time, so no read ever waits long, is still cut off, unanswered, by the
// read-header limit, which counts from the start of the request.
func TestSlowHeadersCutOff(t *testing.T) {
	t.Parallel()
	addr, _ := serveInProcess(t, timeouts{readHeader: 300 * time.Millisecond, read: time.Hour}, nil)
	conn, closed := dialUntilClosed(t, addr, "GET /health HTTP/1.1\r\nHost: x\r\n")
	if got := dribbleUntilClosed(t, conn, closed, "X-Slow: "+strings.Repeat("a", 60000)); len(got) != 0 {
		t.Errorf("the slow request was answered instead of cut off: %q", got)
	}
}

// TestWholeRequestTimeLimit: a client that sends its headers at once and
// then dribbles its body is cut off by the whole-request limit.
func TestWholeRequestTimeLimit(t *testing.T) {
	t.Parallel()
	addr, token := serveInProcess(t, timeouts{read: 300 * time.Millisecond}, nil)
	conn, closed := dialUntilClosed(t, addr, "POST /api/v1/tokens HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "+token+
		"\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{\"name\":\"")
	got := dribbleUntilClosed(t, conn, closed, strings.Repeat("a", 60000))
	if strings.Contains(string(got), " 201 ") {
		t.Errorf("the slow body was accepted: %q", got)
	}
}

// TestIdleConnectionsClosed: a connection that never sends a request is
// closed by the read-header limit, and a keep-alive connection left idle
// after its answer by the idle limit, while the whole-request limit is an
// hour away.
func TestIdleConnectionsClosed(t *testing.T) {
	t.Parallel()
	addr, _ := serveInProcess(t, timeouts{readHeader: 300 * time.Millisecond, idle: 300 * time.Millisecond, read: time.Hour}, nil)
	_, silent := dialUntilClosed(t, addr, "")
	_, kept := dialUntilClosed(t, addr, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
	for _, c := range []struct {
		name   string
		closed <-chan []byte
		answer bool
	}{{"silent connection", silent, false}, {"idle keep-alive connection", kept, true}} {
		select {
		case got := <-c.closed:
			if answered := strings.HasPrefix(string(got), "HTTP/1.1 200 OK\r\n") && strings.HasSuffix(string(got), "\r\n\r\nok\n"); answered != c.answer || (!c.answer && len(got) != 0) {
				t.Errorf("%s: the server sent %q before it closed the connection", c.name, got)
			}
		case <-time.After(time.Minute):
			t.Fatalf("%s still open after a minute: the limit did not fire", c.name)
		}
	}
}

// TestServerTimeoutsAsDocumented: the daemon's server carries the limits
// SECURITY.md states (the tests above watch each one fire, shortened).
func TestServerTimeoutsAsDocumented(t *testing.T) {
	hs := (&server{}).httpServer(nil)
	got := []time.Duration{hs.ReadHeaderTimeout, hs.ReadTimeout, hs.WriteTimeout, hs.IdleTimeout}
	if want := []time.Duration{10 * time.Second, 30 * time.Second, 30 * time.Second, 2 * time.Minute}; !slices.Equal(got, want) {
		t.Errorf("read-header, read, write, idle timeouts = %v, want %v", got, want)
	}
	if hs.MaxHeaderBytes != 64<<10 {
		t.Errorf("MaxHeaderBytes = %d, want 64 KiB", hs.MaxHeaderBytes)
	}
}

// TestPanicBecomes500: a handler that panics gets a JSON 500 with the
// headers every answer carries, counted in the metrics; the log says which
// route panicked but not the panic's value, which may hold a secret; a
// handler that already answered keeps its answer.
func TestPanicBecomes500(t *testing.T) {
	var logged bytes.Buffer
	secret := newAPIToken()
	srv := &server{metrics: newMetrics(), logger: log.New(&logged, "", 0)}
	for _, c := range []struct {
		name    string
		handler http.HandlerFunc
		code    int
		body    string
	}{
		{"before answering", func(http.ResponseWriter, *http.Request) { panic("boom " + secret) }, 500, `{"error":"internal error"}`},
		{"after answering", func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(http.StatusAccepted)
			panic(secret)
		}, 202, ""},
	} {
		rec := httptest.NewRecorder()
		srv.observe(c.handler).ServeHTTP(rec, httptest.NewRequest("GET", "/x", nil))
		if rec.Code != c.code || strings.TrimSpace(rec.Body.String()) != c.body {
			t.Errorf("%s: %d %q, want %d %q", c.name, rec.Code, rec.Body.String(), c.code, c.body)
		}
		if (c.code == 500 && rec.Header().Get("Content-Type") != "application/json") || rec.Header().Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("%s: headers %v", c.name, rec.Header())
		}
	}
	if n := strings.Count(logged.String(), "panicked"); n != 2 || strings.Contains(logged.String(), secretPart(secret)) {
		t.Errorf("log after two panics:\n%s", logged.String())
	}
	var metrics strings.Builder
	srv.metrics.write(&metrics, newTokenStore(filepath.Join(t.TempDir(), tokenStoreFile), nil, time.Now))
	if !strings.Contains(metrics.String(), `code="500"} 1`) {
		t.Errorf("the 500 is not counted:\n%s", metrics.String())
	}
	defer func() {
		if p := recover(); p != http.ErrAbortHandler {
			t.Errorf("http.ErrAbortHandler became %v; net/http must see it to abort the answer", p)
		}
	}()
	srv.observe(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic(http.ErrAbortHandler) })).
		ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/x", nil))
}

// FuzzBearerToken: the header parser never panics, and what it returns has
// no spaces and came from a header that starts with the Bearer scheme.
func FuzzBearerToken(f *testing.F) {
	for _, s := range []string{"", "Bearer", "Bearer x", "bearer  x", "Basic x", "Bearer x y", "BEARER\tx"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, value string) {
		tok, err := bearerToken(http.Header{"Authorization": {value}})
		if err != nil {
			return
		}
		if tok == "" || strings.ContainsAny(tok, " \t") || !strings.EqualFold(value[:6], "bearer") {
			t.Fatalf("%q gave token %q", value, tok)
		}
	})
}

// FuzzDecodeCreateToken: the request decoder never panics, answers 400 or
// 413 for what it refuses, and refuses unknown fields and trailing data.
func FuzzDecodeCreateToken(f *testing.F) {
	for _, s := range []string{`{"name":"a"}`, `{"name":"a","ttl_secs":5,"scope":"admin"}`, `{"name":"a","allow_from":["10.0.0.0/8"]}`, `{"x":1}`, `{} {}`, `[`, ``, `{"name":"a"}x`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		req := &http.Request{Method: "POST", Body: io.NopCloser(strings.NewReader(body))}
		var v createTokenRequest
		answer := httptest.NewRecorder()
		if decodeJSON(answer, req, &v) {
			var check map[string]json.RawMessage
			if json.Unmarshal([]byte(body), &check) != nil {
				t.Fatalf("accepted a body that is not one JSON object: %q", body)
			}
			for k := range check {
				if !slices.Contains([]string{"name", "ttl_secs", "scope", "allow_from"}, k) {
					t.Fatalf("accepted unknown field %q", k)
				}
			}
			return
		}
		if code := answer.Code; code != 400 && code != 413 {
			t.Fatalf("refused with status %d", code)
		}
	})
}

// TestCAFileHoldsOneCertificate: /api/v1/ca serves the certificate
// re-encoded, and a ca.pem that holds anything else (the key appended, say)
// stops the daemon from starting instead of being published.
func TestCAFileHoldsOneCertificate(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	d := startDaemon(t, home, []string{"--tls", "on"})
	d.stop(t)
	caPath := filepath.Join(d.dataDir, caCertFile)
	certPEM, _ := os.ReadFile(caPath)
	keyPEM, _ := os.ReadFile(filepath.Join(d.dataDir, caKeyFile))
	for _, c := range []struct{ name, content string }{
		{"key appended", string(certPEM) + string(keyPEM)},
		{"key first", string(keyPEM) + string(certPEM)},
		{"two certificates", string(certPEM) + string(certPEM)},
		{"text before", "see below\n" + string(certPEM)},
		{"text after", string(certPEM) + "x\n"},
		{"empty", ""},
	} {
		os.WriteFile(caPath, []byte(c.content), 0o600)
		res := runRefusedDaemon(t, home, nil, "--port", "0", "--tls", "on")
		if res.code != 1 || !strings.Contains(res.stderr, "helyos: error: "+caPath+" must hold exactly one CERTIFICATE block and nothing else\nhelyos: hint: ") {
			t.Errorf("%s: exit %d, stderr:\n%s", c.name, res.code, res.stderr)
		}
	}
	// One certificate in another layout starts, and is served re-encoded.
	os.WriteFile(caPath, []byte("\n"+strings.ReplaceAll(string(certPEM), "\n", "\r\n")+"\n\n"), 0o600)
	d = startDaemon(t, home, []string{"--tls", "on"})
	_, _, body := d.do(t, "GET", "/api/v1/ca", "", "")
	var ca struct{ PEM string }
	if err := json.Unmarshal([]byte(body), &ca); err != nil || ca.PEM != string(certPEM) {
		t.Errorf("served %q (%v), want the certificate re-encoded:\n%s", ca.PEM, err, certPEM)
	}
}

// TestTokensRedactedInErrors: a token typed where a name, a scope or a field
// belongs is never repeated in the answer, in any spelling.
func TestTokensRedactedInErrors(t *testing.T) {
	t.Parallel()
	d := httpDaemon(t)
	tok := d.token
	cases := []struct {
		name, method, path, body string
		want                     int
	}{
		{"token as name", "POST", "/api/v1/tokens", `{"name":"` + tok + `"}`, 400},
		{"upper-case token as name", "POST", "/api/v1/tokens", `{"name":"` + strings.ToUpper(tok) + `"}`, 400},
		{"token inside a name", "POST", "/api/v1/tokens", `{"name":"ci ` + tok + ` x"}`, 400},
		{"token as scope", "POST", "/api/v1/tokens", `{"name":"x","scope":"` + tok + `"}`, 400},
		{"token as field", "POST", "/api/v1/tokens", `{"` + tok + `":1}`, 400},
		{"token as ttl", "POST", "/api/v1/tokens", `{"name":"x","ttl_secs":"` + tok + `"}`, 400},
		{"token as body", "POST", "/api/v1/tokens", tok, 400},
		{"token revoked by name", "DELETE", "/api/v1/tokens/" + tok, "", 404},
		{"upper-case token revoked by name", "DELETE", "/api/v1/tokens/" + strings.ToUpper(tok), "", 404},
		{"escaped token revoked by name", "DELETE", "/api/v1/tokens/%6e" + tok[1:], "", 404},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, _, body := d.do(t, c.method, c.path, tok, c.body)
			if code != c.want || strings.Contains(strings.ToLower(body), tok[8:]) {
				t.Errorf("%d %s; want %d without the token", code, body, c.want)
			}
		})
	}
}

// TestDataDirOwnedByAnotherUser: a data dir another user owns, or one that
// group or others can write, is refused, not taken over or tightened: they
// could have planted tokens and keys in it (a token store linked to a file
// of theirs gave them an admin token).
func TestDataDirOwnedByAnotherUser(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		mode  os.FileMode
		owner int
		want  string
	}{
		{0o755, 65534, "is owned by uid 65534, not by this user (uid 0)\nhelyos: hint: run the daemon as the dir's owner, or give it a --data-dir of its own\n"},
		{0o777, -1, "is writable by group or others (mode 777): "},
		{0o730, -1, "is writable by group or others (mode 730): "},
		{0o702, -1, "is writable by group or others (mode 702): "},
	} {
		if c.owner >= 0 && os.Getuid() != 0 {
			if os.Getenv("CI") != "" {
				t.Fatal("CI runs as root; this test needs root to give a folder to another user")
			}
			t.Log("skipped a dir of another user: needs root to give a folder to another user")
			continue
		}
		home := t.TempDir()
		dir := filepath.Join(home, ".helyos", "data")
		if err := os.MkdirAll(dir, 0o700); err != nil || os.Chmod(dir, c.mode) != nil || os.Lchown(dir, c.owner, c.owner) != nil {
			t.Fatal("could not set up the data dir")
		}
		res := runRefusedDaemon(t, home, nil, "--port", "0")
		if want := "helyos: error: data dir " + dir + " " + c.want; res.code != 1 || !strings.HasPrefix(res.stderr, want) {
			t.Errorf("mode %o: exit %d, stderr:\n%s\nwant:\n%s", c.mode, res.code, res.stderr, want)
		}
		if m := permOf(t, dir); m != c.mode || len(filesUnder(t, home)) != 2 {
			t.Errorf("mode %o: the refused daemon changed things: mode %o, files %v", c.mode, m, filesUnder(t, home))
		}
	}
}

const healthRequest = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n"

// TestConnectionCaps: at 90% of --max-conns idle connections are closed;
// a connection over --max-conns-per-ip is closed at once; at --max-conns a
// newcomer takes the place of the oldest connection of the busiest address
// if that holds more than the newcomer's would, else it is closed; those in
// a request are otherwise kept; a freed place is taken again. The counts
// stay exact although net/http closes an idle connection twice.
func TestConnectionCaps(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, t.TempDir(), []string{"--max-conns", "10", "--max-conns-per-ip", "6"})
	// The idle connections' whoami also puts the token in the cache, so the
	// held requests below need no Argon2 queue.
	whoami := "GET /api/v1/whoami HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + d.token + "\r\n\r\n"
	var idle []net.Conn
	for _, src := range []string{"127.0.0.2", "127.0.0.2", "127.0.0.2", "127.0.0.2", "127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.3"} {
		c := dialFrom(t, src, d)
		if code := answers(c, whoami); code != 200 {
			t.Fatalf("a connection under the caps: %d", code)
		}
		idle = append(idle, c)
	}
	// hold starts a token create and leaves its body unfinished: the daemon
	// keeps such a connection (for up to the 30 s read timeout).
	hold := func(src string) net.Conn {
		c := dialFrom(t, src, d)
		fmt.Fprintf(c, "POST /api/v1/tokens HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: 2\r\n\r\n{", d.token)
		return c
	}
	held3 := []net.Conn{hold("127.0.0.3")} // the ninth connection: 90% of the cap
	for i, c := range idle {
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		if _, err := c.Read(make([]byte, 1)); errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("idle connection %d still open 20s after the daemon reached 90%% of --max-conns", i)
		}
	}
	var held2 []net.Conn
	for range 6 {
		held2 = append(held2, hold("127.0.0.2"))
	}
	if code := answers(dialFrom(t, "127.0.0.2", d), healthRequest); code != 0 {
		t.Fatalf("a seventh connection from one address got %d, want a hang-up (--max-conns-per-ip 6)", code)
	}
	held3 = append(held3, hold("127.0.0.3"), hold("127.0.0.3"), hold("127.0.0.3")) // 10: the cap
	held3 = append(held3, hold("127.0.0.3"))                                       // 4 < 6: takes 127.0.0.2's oldest place
	held2[0].SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := held2[0].Read(make([]byte, 1)); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("the busiest address's oldest connection still open 20s after a newcomer from a less busy one came")
	}
	if code := answers(dialFrom(t, "127.0.0.2", d), healthRequest); code != 0 {
		t.Fatalf("a newcomer from one of the busiest addresses got %d, want a hang-up (--max-conns 10)", code)
	}
	if code := answers(dialFrom(t, "127.0.0.1", d), healthRequest); code != 200 {
		t.Fatalf("a newcomer from an address with no connection got %d at the cap, want it served", code)
	}
	hungUp := 0
	for i, c := range append(held2[1:], held3...) {
		switch code := answers(c, "}"); code {
		case 0:
			hungUp++
		case 400: // a nameless token
		default:
			t.Fatalf("held connection %d: %d", i, code)
		}
	}
	if hungUp != 1 {
		t.Fatalf("%d held connections hung up, want the one that made room for 127.0.0.1", hungUp)
	}
	pollUntil(t, "a place freed after every held request was answered", func() bool {
		return answers(dialFrom(t, "127.0.0.1", d), healthRequest) == 200
	})
	d.stop(t) // the audit log writes its tallies
	limited := map[string]any{}
	for _, r := range readAuditFile(t, filepath.Join(d.dataDir, auditFileName)) {
		if r.Event == "connections.limited" {
			limited[str(r.Remote)] = r.Detail["reasons"]
		}
	}
	if got := fmt.Sprint(limited["127.0.0.2"]); got != "map[evicted:1 per-address:1 total:1]" && got != "map[evicted:2 per-address:1 total:1]" {
		t.Errorf("connections.limited in the audit log: %v", limited)
	}
}

// TestConnSource: an IPv6 client counts against --max-conns-per-ip by its
// /64, which it has to itself, so it cannot take a new address per
// connection to pass the cap.
func TestConnSource(t *testing.T) {
	for addr, want := range map[string]string{
		"127.0.0.2":                "127.0.0.2",
		"::ffff:10.1.2.3":          "10.1.2.3",
		"::1":                      "::/64",
		"2001:db8:1:2:aaaa::1":     "2001:db8:1:2::/64",
		"2001:db8:1:2:ffff:ffff::": "2001:db8:1:2::/64",
		"2001:db8:1:3::1":          "2001:db8:1:3::/64",
	} {
		if got := connSource(&net.TCPAddr{IP: net.ParseIP(addr)}); got != want {
			t.Errorf("connSource(%s) = %s, want %s", addr, got, want)
		}
	}
}

// TestOpenFileLimit: the daemon lifts its soft open-file limit to the hard
// one and lowers --max-conns to leave room under it for its own files.
func TestOpenFileLimit(t *testing.T) {
	t.Parallel()
	d := startDaemonVia(t, []string{needTool(t, "prlimit"), "--nofile=100:600", "--"}, t.TempDir(), nil)
	limits, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", d.cmd.Process.Pid))
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	if !regexp.MustCompile(`Max open files +600 +600 `).Match(limits) {
		t.Errorf("soft limit not raised to the hard one:\n%s", limits)
	}
	if !strings.Contains(d.out.String(), "warning: the open-file limit is 600, so --max-conns is lowered to 536; ") {
		t.Errorf("no warning that --max-conns was lowered:\n%s", d.out.String())
	}
}

// TestClientErrorLinesRateLimited: log lines any client can cause (failed
// TLS handshakes here; accept errors and refused connections take the same
// path) reach the log at most once a second, with a count of the rest.
func TestClientErrorLinesRateLimited(t *testing.T) {
	t.Parallel()
	d := tlsDaemon(t)
	start := time.Now()
	badHandshake := func() {
		c := dialFrom(t, "127.0.0.1", d)
		c.SetDeadline(time.Now().Add(20 * time.Second))
		io.WriteString(c, "hello\r\n\r\n")
		io.Copy(io.Discard, c) // the daemon logs the failure, then hangs up
		c.Close()
	}
	for range 50 {
		badHandshake()
	}
	pollUntil(t, "a count of dropped lines", func() bool {
		if strings.Contains(d.out.String(), "more such lines since the last one)") {
			return true
		}
		badHandshake()
		return false
	}, d.out)
	lines := strings.Count(d.out.String(), "TLS handshake error")
	if most := int(time.Since(start)/time.Second) + 1; lines > most {
		t.Errorf("%d handshake-error lines in %v, want at most one a second:\n%s", lines, time.Since(start), d.out.String())
	}
}

// stalledWriter is a ResponseWriter whose client never reads: its first
// Write blocks until the test lets it go.
type stalledWriter struct {
	httptest.ResponseRecorder
	writing, release chan struct{}
	once             sync.Once
}

func (w *stalledWriter) Write(b []byte) (int, error) {
	w.once.Do(func() { close(w.writing); <-w.release })
	return len(b), nil
}

// TestMetricsReaderCannotStallRequests: a /metrics client that does not
// read holds no lock that every request needs to count itself.
func TestMetricsReaderCannotStallRequests(t *testing.T) {
	s, _ := newTestServer(t)
	w := &stalledWriter{ResponseRecorder: *httptest.NewRecorder(), writing: make(chan struct{}), release: make(chan struct{})}
	defer close(w.release)
	go s.handleMetrics(w, httptest.NewRequest("GET", "/metrics", nil), nil)
	<-w.writing
	if !s.metrics.mu.TryLock() {
		t.Fatal("the metrics lock is held while a /metrics answer waits for its client")
	}
	s.metrics.mu.Unlock()
}
