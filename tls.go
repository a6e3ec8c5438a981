package main

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Files under the data dir. Keys are 0600, like every file there.
const (
	caCertFile     = "ca.pem"
	caKeyFile      = "ca-key.pem"
	serverCertFile = "server.pem"
	serverKeyFile  = "server-key.pem"
)

const (
	caValidity     = 10 * 365 * 24 * time.Hour
	serverValidity = 365 * 24 * time.Hour
	// renewBefore is how long before expiry the serving certificate is
	// re-issued, at start or by a running daemon at its next handshake.
	renewBefore = 30 * 24 * time.Hour
)

// fingerprint is the SHA-256 of a certificate's DER bytes as lower-case hex
// pairs joined by ':', the form `openssl x509 -fingerprint -sha256` prints
// (in upper case).
func fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return strings.ReplaceAll(fmt.Sprintf("% x", sum), " ", ":")
}

// normalizeFingerprint accepts the spellings people paste: any case, with or
// without colons (or spaces), with an optional "sha256:" prefix. It returns
// 64 lower-case hex characters, or an error.
func normalizeFingerprint(s string) (string, error) {
	t := strings.TrimPrefix(strings.ToLower(strings.TrimSpace(s)), "sha256:")
	t = strings.NewReplacer(":", "", " ", "").Replace(t)
	if len(t) != 64 || !isLowerHex(t) {
		return "", fmt.Errorf("fingerprint %q is not a SHA-256 fingerprint (64 hex digits, colons optional)", s)
	}
	return t, nil
}

// sameFingerprint compares two fingerprints in any accepted spelling.
func sameFingerprint(a, b string) bool {
	na, errA := normalizeFingerprint(a)
	nb, errB := normalizeFingerprint(b)
	return errA == nil && errB == nil && na == nb
}

// isLoopback reports whether host names only this machine: "localhost" or
// an IP address in 127.0.0.0/8 or ::1, with or without IPv6 brackets.
func isLoopback(host string) bool {
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	return strings.EqualFold(host, "localhost") || net.ParseIP(host).IsLoopback()
}

// isWildcard reports whether host binds every interface.
func isWildcard(host string) bool {
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	return host == "" || net.ParseIP(host).IsUnspecified()
}

// certSANs is the sorted, de-duplicated list of names the serving
// certificate must carry.
func certSANs(bindHost, advertise string, extra []string) []string {
	hostname, _ := os.Hostname() // "" when unknown: dropped below
	names := append([]string{"localhost", "127.0.0.1", "::1", advertise, hostname}, extra...)
	if !isWildcard(bindHost) {
		names = append(names, bindHost)
	}
	for i, n := range names {
		names[i] = strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(n), "["), "]"))
	}
	slices.Sort(names)
	return slices.DeleteFunc(slices.Compact(names), func(n string) bool { return n == "" })
}

// certAuthority is the daemon's self-signed CA. Its key is kept so the
// serving certificate can be re-issued and pinned clients keep working.
type certAuthority struct {
	cert *x509.Certificate
	key  crypto.Signer
	pem  []byte
}

// loadOrCreateCA reads the CA from dir, or creates one there.
func loadOrCreateCA(dir string, now time.Time) (*certAuthority, error) {
	certPEM, certErr := os.ReadFile(filepath.Join(dir, caCertFile))
	keyPEM, keyErr := os.ReadFile(filepath.Join(dir, caKeyFile))
	block, rest := pem.Decode(certPEM)
	var pair tls.Certificate
	var err error
	switch {
	case errors.Is(certErr, os.ErrNotExist) && errors.Is(keyErr, os.ErrNotExist):
		pair, err = newCert(dir, caCertFile, caKeyFile, &x509.Certificate{
			Subject:               pkix.Name{CommonName: "helyos CA", Organization: []string{"helyos"}},
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
			BasicConstraintsValid: true,
			IsCA:                  true,
			MaxPathLenZero:        true,
		}, nil, now, caValidity)
	case certErr != nil || keyErr != nil:
		return nil, fmt.Errorf("read CA in %s: %w", dir, errors.Join(certErr, keyErr))
	// /api/v1/ca publishes the certificate, so the file must hold nothing
	// else (a key pasted after it would be published too).
	case block == nil || block.Type != "CERTIFICATE" || len(block.Headers) > 0 || len(bytes.TrimSpace(rest)) > 0 ||
		!bytes.HasPrefix(bytes.TrimSpace(certPEM), []byte("-----BEGIN")):
		return nil, withHint(fmt.Errorf("%s must hold exactly one CERTIFICATE block and nothing else", filepath.Join(dir, caCertFile)),
			"remove whatever else is in it (the key belongs in "+caKeyFile+" only), or restore the file from a backup")
	default:
		pair, err = withLeaf(tls.X509KeyPair(certPEM, keyPEM))
	}
	if err != nil {
		return nil, fmt.Errorf("load or create the CA in %s: %w", dir, err)
	}
	cert := pair.Leaf
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok || !cert.IsCA {
		return nil, fmt.Errorf("load CA in %s: %s is not a CA certificate with a signing key", dir, caCertFile)
	}
	// Re-encoded from the parsed certificate: what is served is the
	// certificate and only the certificate.
	return &certAuthority{cert: cert, key: signer, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})}, nil
}

// issueServerCert signs a serving certificate for sans and writes it to dir.
func (ca *certAuthority) issueServerCert(dir string, sans []string, now time.Time) (*tls.Certificate, error) {
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "helyos daemon", Organization: []string{"helyos"}},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, san := range sans {
		if ip := net.ParseIP(san); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, san)
		}
	}
	pair, err := newCert(dir, serverCertFile, serverKeyFile, tmpl, ca, now, serverValidity)
	if err != nil {
		return nil, err
	}
	pair.Certificate = append(pair.Certificate, ca.cert.Raw)
	return &pair, nil
}

// newCert gives tmpl a fresh P-256 key (x509 draws a random serial), makes
// it valid from an hour before now for validity, signs it with ca's key
// (with its own when ca is nil: the CA itself) and writes the key, then the
// certificate, to dir, so a crash between the two never leaves a
// certificate without its key.
func newCert(dir, certName, keyName string, tmpl *x509.Certificate, ca *certAuthority, now time.Time, validity time.Duration) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("generate key for %s: %w", certName, err)
	}
	tmpl.NotBefore, tmpl.NotAfter = now.Add(-time.Hour), now.Add(validity)
	parent, signer := tmpl, crypto.Signer(key)
	if ca != nil {
		parent, signer = ca.cert, ca.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("sign %s: %w", certName, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("encode key for %s: %w", certName, err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	if err := writeFileAtomic(filepath.Join(dir, keyName), keyPEM); err != nil {
		return tls.Certificate{}, err
	}
	if err := writeFileAtomic(filepath.Join(dir, certName), certPEM); err != nil {
		return tls.Certificate{}, err
	}
	return withLeaf(tls.X509KeyPair(certPEM, keyPEM))
}

// servingCert hands out the daemon's certificate and re-issues it from the
// same CA when it nears expiry, so a daemon that runs for years keeps a
// valid certificate without a restart. Safe for concurrent use.
type servingCert struct {
	ca    *certAuthority
	dir   string
	sans  []string
	now   func() time.Time
	audit *auditLog

	mu   sync.Mutex
	cert *tls.Certificate
}

// newServingCert serves the stored certificate if it was signed by ca,
// carries exactly sans and is not near expiry; otherwise it issues one.
func newServingCert(ca *certAuthority, dir string, sans []string, now func() time.Time, audit *auditLog) (*servingCert, error) {
	s := &servingCert{ca: ca, dir: dir, sans: sans, now: now, audit: audit}
	pair, err := withLeaf(tls.LoadX509KeyPair(filepath.Join(dir, serverCertFile), filepath.Join(dir, serverKeyFile)))
	why := "no usable serving certificate"
	if err == nil {
		names := slices.Clone(pair.Leaf.DNSNames)
		for _, ip := range pair.Leaf.IPAddresses {
			names = append(names, ip.String())
		}
		slices.Sort(names)
		switch {
		case pair.Leaf.CheckSignatureFrom(ca.cert) != nil:
			why = "not signed by this CA"
		case now().After(pair.Leaf.NotAfter.Add(-renewBefore)):
			why = "near expiry"
		case !slices.Equal(names, sans):
			why = "names changed"
		default:
			pair.Certificate = [][]byte{pair.Leaf.Raw, ca.cert.Raw}
			s.cert = &pair
			return s, nil
		}
	}
	if err := s.issue(why); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *servingCert) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.now().After(s.cert.Leaf.NotAfter.Add(-renewBefore)) {
		if err := s.issue("near expiry"); err != nil {
			return nil, err
		}
	}
	return s.cert, nil
}

// certFiles serves the operator's --tls-cert/--tls-key pair. load reads the
// files again (SIGHUP) and swaps the pair in only when it loaded whole;
// handshakes read the current pair without a lock.
type certFiles struct {
	certPath, keyPath string
	now               func() time.Time
	pair              atomic.Pointer[tls.Certificate]
}

// load refuses, besides a pair that does not load, one that would serve
// worse than the pair in service: a certificate out of date (a renewal
// gone wrong, an old file copied back), or a key every user may read.
func (c *certFiles) load() error {
	fi, err := os.Stat(c.keyPath)
	if err == nil && fi.Mode().Perm()&0o007 != 0 {
		err = fmt.Errorf("%s is readable by every user (mode %04o); chmod o-rwx it", c.keyPath, fi.Mode().Perm())
	}
	var pair tls.Certificate
	if err == nil {
		pair, err = withLeaf(tls.LoadX509KeyPair(c.certPath, c.keyPath))
	}
	if now := c.now(); err == nil && (now.Before(pair.Leaf.NotBefore) || now.After(pair.Leaf.NotAfter)) {
		err = fmt.Errorf("the certificate in %s is valid from %s to %s, not now", c.certPath,
			pair.Leaf.NotBefore.UTC().Format(time.RFC3339), pair.Leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if err != nil {
		return fmt.Errorf("load --tls-cert and --tls-key: %w", err)
	}
	c.pair.Store(&pair)
	return nil
}

func (c *certFiles) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return c.pair.Load(), nil
}

// issue replaces the serving certificate and records cert.reissued. The
// record is best effort (a failure is logged): refusing to renew would
// take the daemon off the air when its certificate expires.
func (s *servingCert) issue(why string) error {
	c, err := s.ca.issueServerCert(s.dir, s.sans, s.now())
	if err != nil {
		return err
	}
	s.cert = c
	s.audit.record("cert.reissued", "", "", serverCertFile, outcomeSuccess,
		map[string]any{"reason": why, "names": s.sans, "serial": c.Leaf.SerialNumber.Text(16), "not_after": c.Leaf.NotAfter})
	return nil
}

// serverTLSConfig is the daemon's TLS policy: TLS 1.2 at least.
func serverTLSConfig(getCert func(*tls.ClientHelloInfo) (*tls.Certificate, error)) *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: getCert}
}

// withLeaf is the pair tls.X509KeyPair or tls.LoadX509KeyPair returned,
// with its Leaf parsed also when GODEBUG=x509keypairleaf=0 leaves it nil.
func withLeaf(pair tls.Certificate, err error) (tls.Certificate, error) {
	if err == nil && pair.Leaf == nil {
		pair.Leaf, err = x509.ParseCertificate(pair.Certificate[0])
	}
	return pair, err
}

// parseCAPEM returns the single CA certificate in pemBytes.
func parseCAPEM(pemBytes []byte) (*x509.Certificate, error) {
	block, rest := pem.Decode(pemBytes)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("not a PEM certificate")
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("data after the certificate; give the CA certificate alone")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse certificate: %w", err)
	}
	return cert, nil
}

// clientTLSConfig is how the CLI dials a daemon: verified against the pinned
// CA when there is one, against the system roots otherwise, or not at all
// when the user asked for insecure.
func clientTLSConfig(pinnedCA *x509.Certificate, insecure bool) *tls.Config {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: insecure}
	if pinnedCA != nil {
		cfg.RootCAs = x509.NewCertPool()
		cfg.RootCAs.AddCert(pinnedCA)
	}
	return cfg
}
