package main

import (
	"crypto/x509"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func TestIsLoopback(t *testing.T) {
	cases := map[string]bool{
		"localhost": true, "LOCALHOST": true, "127.0.0.1": true, "127.0.0.2": true, "127.255.255.254": true,
		"::1": true, "[::1]": true, "0:0:0:0:0:0:0:1": true,
		"0.0.0.0": false, "::": false, "": false, "10.0.0.1": false, "192.168.1.5": false,
		"example.com": false, "localhost.example.com": false, "127.0.0.1.nip.io": false, "::ffff:10.0.0.1": false,
	}
	for host, want := range cases {
		if got := isLoopback(host); got != want {
			t.Errorf("isLoopback(%q) = %v, want %v", host, got, want)
		}
	}
}

func TestIsWildcard(t *testing.T) {
	cases := map[string]bool{"0.0.0.0": true, "::": true, "[::]": true, "": true, "127.0.0.1": false, "localhost": false, "10.0.0.1": false}
	for host, want := range cases {
		if got := isWildcard(host); got != want {
			t.Errorf("isWildcard(%q) = %v, want %v", host, got, want)
		}
	}
}

func TestNormalizeFingerprint(t *testing.T) {
	const hex = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
	colon := fingerprint(nil) // any valid colon form, to exercise the shape
	if len(colon) != 95 {
		t.Fatalf("fingerprint shape %q", colon)
	}
	ok := []string{
		hex,
		"9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08",
		"9f:86:d0:81:88:4c:7d:65:9a:2f:ea:a0:c5:5a:d0:15:a3:bf:4f:1b:2b:0b:82:2c:d1:5d:6c:15:b0:f0:0a:08",
		"sha256:" + hex,
		"SHA256:9F:86:D0:81:88:4C:7D:65:9A:2F:EA:A0:C5:5A:D0:15:A3:BF:4F:1B:2B:0B:82:2C:D1:5D:6C:15:B0:F0:0A:08",
		"  " + hex + "\n",
	}
	for _, in := range ok {
		if got, err := normalizeFingerprint(in); err != nil || got != hex {
			t.Errorf("normalizeFingerprint(%q) = %q, %v", in, got, err)
		}
	}
	bad := []string{"", "sha256:", hex[:62], hex + "00", "zz" + hex[2:], "sha1:" + hex, "md5:" + hex}
	for _, in := range bad {
		if _, err := normalizeFingerprint(in); err == nil {
			t.Errorf("normalizeFingerprint(%q) accepted", in)
		}
	}
	if sameFingerprint(hex, "") || !sameFingerprint(hex, ok[2]) {
		t.Error("sameFingerprint")
	}
}

func TestCertSANs(t *testing.T) {
	got := certSANs("0.0.0.0", "Cluster.Example.com", []string{"10.0.0.5", "[fd00::1]", "", "localhost"})
	for _, want := range []string{"localhost", "127.0.0.1", "::1", "cluster.example.com", "10.0.0.5", "fd00::1"} {
		if !slices.Contains(got, want) {
			t.Errorf("SANs %v lack %q", got, want)
		}
	}
	if slices.Contains(got, "0.0.0.0") || slices.Contains(got, "") {
		t.Errorf("SANs %v carry a wildcard or an empty name", got)
	}
	if !slices.IsSorted(got) || len(slices.Compact(slices.Clone(got))) != len(got) {
		t.Errorf("SANs %v not sorted and unique", got)
	}
	if !slices.Contains(certSANs("192.168.1.9", "", nil), "192.168.1.9") {
		t.Error("the bind host is not a SAN")
	}
}

// TestServingCertRenewal: near expiry the serving certificate is re-issued
// by the same CA, at start and while running; otherwise it is reused.
func TestServingCertRenewal(t *testing.T) {
	dir := t.TempDir()
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	ca, err := loadOrCreateCA(dir, clock.now())
	if err != nil {
		t.Fatal(err)
	}
	sans := certSANs("127.0.0.1", "", nil)
	audit := newTestAudit(t, t.TempDir(), defaultAuditMaxSize, clock.now)
	sc, err := newServingCert(ca, dir, sans, clock.now, audit)
	if err != nil {
		t.Fatal(err)
	}
	first, _ := sc.get(nil)
	again, err := newServingCert(ca, dir, sans, clock.now, audit)
	if err != nil {
		t.Fatal(err)
	}
	if c, _ := again.get(nil); c.Leaf.SerialNumber.Cmp(first.Leaf.SerialNumber) != 0 {
		t.Error("an unchanged certificate was re-issued")
	}
	withNew, _ := newServingCert(ca, dir, certSANs("127.0.0.1", "new.test", nil), clock.now, audit)
	if c, _ := withNew.get(nil); c.Leaf.SerialNumber.Cmp(first.Leaf.SerialNumber) == 0 || !slices.Contains(c.Leaf.DNSNames, "new.test") {
		t.Error("new SANs did not re-issue the certificate")
	}

	clock.advance(serverValidity - renewBefore + time.Hour)
	renewed, err := sc.get(nil)
	if err != nil {
		t.Fatal(err)
	}
	if renewed.Leaf.SerialNumber.Cmp(first.Leaf.SerialNumber) == 0 {
		t.Fatal("a certificate near expiry was not re-issued")
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)
	if _, err := renewed.Leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: "localhost", CurrentTime: clock.now()}); err != nil {
		t.Errorf("re-issued certificate does not verify under the same CA: %v", err)
	}
	var reasons []string
	for _, rec := range readAuditFile(t, audit.path(0)) {
		if rec.Event == "cert.reissued" && *rec.Target == serverCertFile {
			reasons = append(reasons, rec.Detail["reason"].(string))
		}
	}
	if want := []string{"no usable serving certificate", "names changed", "near expiry"}; !slices.Equal(reasons, want) {
		t.Errorf("cert.reissued reasons %q, want %q", reasons, want)
	}
	reloaded, err := loadOrCreateCA(dir, clock.now())
	if err != nil || !reloaded.cert.Equal(ca.cert) {
		t.Errorf("CA not reloaded as it was: %v", err)
	}
}

// FuzzNormalizeFingerprint: never panics; whatever it accepts is 64
// lower-case hex characters and normalises to itself.
func FuzzNormalizeFingerprint(f *testing.F) {
	for _, s := range []string{"", "sha256:", fingerprint([]byte("x")), "SHA256:AB:CD", "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := normalizeFingerprint(s)
		if err != nil {
			return
		}
		if len(n) != 64 || !isLowerHex(n) {
			t.Fatalf("accepted %q as %q", s, n)
		}
		if again, err := normalizeFingerprint(n); err != nil || again != n {
			t.Fatalf("not idempotent: %q → %q → %q, %v", s, n, again, err)
		}
	})
}

// TestLeafWithoutX509KeyPairLeaf: GODEBUG=x509keypairleaf=0 makes
// tls.X509KeyPair leave Leaf nil; the stored CA and serving certificate (a
// restart) and an operator's --tls-cert load and serve all the same.
func TestLeafWithoutX509KeyPairLeaf(t *testing.T) {
	t.Parallel()
	const godebug = "GODEBUG=x509keypairleaf=0"
	home := t.TempDir()
	startDaemon(t, home, []string{"--tls", "on"}, godebug).stop(t)
	d := startDaemon(t, home, []string{"--tls", "on"}, godebug)
	own := startDaemon(t, t.TempDir(), []string{"--tls-cert", filepath.Join(d.dataDir, serverCertFile), "--tls-key", filepath.Join(d.dataDir, serverKeyFile)}, godebug)
	for _, url := range []string{d.url, own.url} {
		resp, err := d.client(t).Get(url + "/api/v1/ca")
		if err != nil {
			t.Fatalf("GET %s/api/v1/ca: %v", url, err)
		}
		resp.Body.Close()
	}
}
