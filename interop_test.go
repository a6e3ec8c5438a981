package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Interop: real clients that are not ours (curl, openssl, Python's tomllib)
// against a real daemon and the files the real CLI writes. .ci/run installs
// them; needTool fails these tests under CI when one is missing.

// TestInteropCurl: curl trusts the daemon with the CA from the data dir
// alone, sends a bearer token, and refuses the daemon without it.
func TestInteropCurl(t *testing.T) {
	t.Parallel()
	d := tlsDaemon(t)
	ca := filepath.Join(d.dataDir, caCertFile)
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"health with the CA", []string{"--cacert", ca, d.url + "/health"}, 0, "ok"},
		{"whoami with the CA and a token", []string{"--cacert", ca, "-H", "Authorization: Bearer " + d.token, d.url + "/api/v1/whoami"}, 0, `"name":"bootstrap"`},
		{"whoami without a token", []string{"--cacert", ca, "-w", "%{http_code}", d.url + "/api/v1/whoami"}, 0, `{"error":"missing or invalid bearer token"}` + "\n401"},
		{"by name localhost", []string{"--cacert", ca, strings.Replace(d.url, "127.0.0.1", "localhost", 1) + "/health"}, 0, "ok"},
		{"system roots only", []string{d.url + "/health"}, 60, "certificate"},
		// OpenSSL's own floor lowered, so the refusal is the server's alert.
		{"TLS 1.1 at most", []string{"--cacert", ca, "--tls-max", "1.1", "--ciphers", "DEFAULT:@SECLEVEL=0", d.url + "/health"}, 35, "alert protocol version"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, code := runTool(t, "curl", append([]string{"-sS", "--max-time", "120"}, tc.args...)...)
			if code != tc.code || !strings.Contains(out, tc.want) {
				t.Errorf("curl %v: exit %d, want %d with %q:\n%s", tc.args, code, tc.code, tc.want, out)
			}
		})
	}
}

// TestInteropOpenSSL: openssl s_client negotiates TLS 1.2 and 1.3, is refused
// at TLS 1.1 by the server (OpenSSL's own floor lowered so the refusal is
// ours), sees a serving certificate issued by the CA with the promised
// names, and computes the same CA fingerprint the daemon printed.
func TestInteropOpenSSL(t *testing.T) {
	t.Parallel()
	d := tlsDaemon(t)
	addr := strings.TrimPrefix(d.url, "https://")
	ca := filepath.Join(d.dataDir, caCertFile)
	sClient := func(args ...string) (string, int) {
		return runTool(t, "openssl", append([]string{"s_client", "-connect", addr, "-servername", "localhost", "-CAfile", ca, "-verify_return_error"}, args...)...)
	}

	for _, tc := range []struct {
		version, protocol string
		ok                bool
	}{
		{"-tls1_3", "TLSv1.3", true},
		{"-tls1_2", "TLSv1.2", true},
		{"-tls1_1", "", false},
		{"-tls1", "", false},
	} {
		out, code := sClient(tc.version, "-cipher", "DEFAULT:@SECLEVEL=0")
		switch {
		case tc.ok && (code != 0 || !strings.Contains(out, "Protocol  : "+tc.protocol) && !strings.Contains(out, "New, "+tc.protocol) || !strings.Contains(out, "Verify return code: 0 (ok)")):
			t.Errorf("openssl s_client %s: exit %d, want a verified %s session:\n%s", tc.version, code, tc.protocol, out)
		case !tc.ok && (code == 0 || !strings.Contains(out, "alert protocol version")):
			t.Errorf("openssl s_client %s: exit %d, want the server's protocol_version alert:\n%s", tc.version, code, out)
		}
	}

	// The served chain: the serving certificate, issued by our CA, with the
	// SANs, then the CA itself.
	out, code := sClient("-showcerts")
	if code != 0 || strings.Count(out, "-----BEGIN CERTIFICATE-----") != 2 || !strings.Contains(out, " 1 s:O = helyos, CN = helyos CA") {
		t.Fatalf("openssl s_client -showcerts: exit %d, want the serving certificate then the CA:\n%s", code, out)
	}
	leaf := out[strings.Index(out, "-----BEGIN CERTIFICATE-----") : strings.Index(out, "-----END CERTIFICATE-----")+len("-----END CERTIFICATE-----")]
	leafFile := filepath.Join(t.TempDir(), "leaf.pem")
	if err := os.WriteFile(leafFile, []byte(leaf+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, code := runTool(t, "openssl", "verify", "-CAfile", ca, leafFile); code != 0 || !strings.Contains(out, ": OK") {
		t.Errorf("openssl verify of the served certificate against ca.pem: exit %d:\n%s", code, out)
	}
	out, _ = runTool(t, "openssl", "x509", "-noout", "-ext", "subjectAltName,extendedKeyUsage,keyUsage", "-in", leafFile)
	for _, want := range []string{"DNS:localhost", "IP Address:127.0.0.1", "IP Address:0:0:0:0:0:0:0:1", "TLS Web Server Authentication", "Digital Signature"} {
		if !strings.Contains(out, want) {
			t.Errorf("served certificate lacks %q:\n%s", want, out)
		}
	}
	out, _ = runTool(t, "openssl", "x509", "-noout", "-ext", "basicConstraints,keyUsage", "-in", ca)
	if !strings.Contains(out, "CA:TRUE") || !strings.Contains(out, "Certificate Sign") {
		t.Errorf("ca.pem is not a CA certificate:\n%s", out)
	}

	// The fingerprint OpenSSL computes is the one the daemon printed.
	out, code = runTool(t, "openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", ca)
	_, got, _ := strings.Cut(strings.TrimSpace(out), "=")
	if code != 0 || !strings.EqualFold(got, d.fp) {
		t.Errorf("openssl fingerprint %q, daemon printed %q", got, d.fp)
	}
}

// TestInteropTomllib: Python's tomllib reads every config file the real CLI
// and daemon write as the same data our reader sees.
func TestInteropTomllib(t *testing.T) {
	t.Parallel()
	needTomllib(t)
	d := tlsDaemon(t)
	home := d.home // first start wrote the local context here
	mustRun(t, home, nil, "login", d.url, "--ca-fingerprint", d.fp, "--token", d.token, "--name", "prod", "--project", "naïve \"#1\" \\ 🚀")
	mustRun(t, home, nil, "--server", d.url, "context", "set", "cmd", "--token-command", "pass show 'helyos/prod' # \"x\"\t\\")
	mustRun(t, home, nil, "context", "rename", "local", "local.old")

	for _, file := range []string{"config.toml", "config.toml.bak"} {
		path := filepath.Join(home, ".helyos", file)
		ours, err := loadConfig(path)
		if err != nil {
			t.Fatal(err)
		}
		if theirs := tomllibLoad(t, path); !cfgEqual(theirs, ours) {
			t.Errorf("%s: tomllib reads\n%s\nour reader reads\n%s", file, cfgString(theirs), cfgString(ours))
		}
	}
}
