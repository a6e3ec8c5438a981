// How a command reaches a daemon: the server address, the context it names,
// the token it sends, the TLS trust it pins, and the errors it relays.

package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// normalizeServer turns what a person types into scheme://host:port:
// https:// when no scheme is given, :6443 when no port, IPv6 in brackets.
func normalizeServer(s string) (string, error) {
	raw := strings.TrimSpace(s)
	if raw == "" {
		return "", errors.New("server address is empty")
	}
	if tokenLikePattern().MatchString(strings.ToLower(raw)) { // and must not reach a DNS resolver
		return "", errors.New("the server address looks like an API token")
	}
	if !strings.Contains(raw, "://") {
		if strings.Count(raw, ":") > 1 && !strings.HasPrefix(raw, "[") {
			raw = "[" + raw + "]" // a bare IPv6 literal
		}
		raw = "https://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("server address %q is not a URL: %w", s, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("server address %q: scheme must be https or http", s)
	}
	if u.Host == "" || u.Hostname() == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("server address %q must be just scheme://host[:port]", s)
	}
	port := cmp.Or(u.Port(), defaultPort)
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("server address %q has an invalid port", s)
	}
	// An IPv6 zone (fe80::1%eth0) cannot be checked against a certificate's
	// IP names, so a link-local address would never verify over HTTPS.
	if strings.Contains(u.Hostname(), "%") {
		return "", withHint(fmt.Errorf("server address %q has an IPv6 zone (%%...)", s),
			"use a routable address or a host name")
	}
	return u.Scheme + "://" + net.JoinHostPort(strings.ToLower(u.Hostname()), port), nil
}

// sameServer reports whether two server addresses name the same daemon.
func sameServer(a, b string) bool {
	na, errA := normalizeServer(a)
	nb, errB := normalizeServer(b)
	return errA == nil && errB == nil && na == nb
}

var errSeveralContexts = errors.New("several contexts exist and none is current")

// activeContext picks the context a command works against: the one called
// name, else --context, then $HELYOS_CONTEXT, then current-context, then
// the only context there is. It returns nil when there is no context at all.
func (g *globals) activeContext(cfg *Config, name string) (*Context, error) {
	from := ""
	if name == "" {
		name, from = g.context, " (from --context)"
	}
	if name == "" {
		name, from = os.Getenv("HELYOS_CONTEXT"), " (from $HELYOS_CONTEXT)"
	}
	if name == "" {
		name, from = cfg.CurrentContext, " (from current-context)"
	}
	if name != "" {
		if c := cfg.Context(name); c != nil {
			return c, nil
		}
		return nil, withHint(fmt.Errorf("context %q%s does not exist", name, from), "run 'helyos context ls' to see the contexts")
	}
	switch len(cfg.Contexts) {
	case 0:
		return nil, nil
	case 1:
		return cfg.Contexts[0], nil
	}
	return nil, withHint(fmt.Errorf("%w: %s", errSeveralContexts, strings.Join(cfg.Names(), ", ")),
		"pick one with 'helyos context use NAME', or pass --context NAME")
}

// target is a resolved daemon: where to dial, with which token and trust.
type target struct {
	server      string
	token       string
	tokenSource string   // for messages: never the token itself
	ctx         *Context // the context whose server this is, if any
	client      *http.Client
	tlsMode     trustMode
	stderr      io.Writer // for the expiry warning; nil: none
	warned      bool      // the expiry warning was given
}

// resolve applies the precedence rules: flag > environment > context >
// built-in default. A context's token and trust apply only when its own
// server is the one dialled.
func (g *globals) resolve() (*target, error) {
	cfg, err := g.loadConfig()
	if err != nil {
		return nil, err
	}
	server, serverFrom := g.server, "--server"
	if server == "" {
		server, serverFrom = os.Getenv("HELYOS_SERVER"), "$HELYOS_SERVER"
	}
	token, tokenFrom := g.token, "--token"
	if token == "" {
		token, tokenFrom = os.Getenv("HELYOS_API_TOKEN"), "$HELYOS_API_TOKEN"
	}
	ctx, err := g.activeContext(cfg, "")
	if err != nil && !(errors.Is(err, errSeveralContexts) && server != "" && token != "") {
		return nil, err
	}
	switch {
	case server != "":
	case ctx != nil:
		server, serverFrom = ctx.Server, fmt.Sprintf("context %q", ctx.Name)
	default:
		server, serverFrom = defaultServer, "the built-in default"
	}
	if server, err = normalizeServer(server); err != nil {
		return nil, fmt.Errorf("server from %s: %w", serverFrom, err)
	}
	if ctx != nil && !sameServer(ctx.Server, server) {
		ctx = nil // its token and pin belong to another daemon
	}
	if g.public {
		token = "" // and no token-command runs
	} else if token == "" && ctx != nil {
		if token, err = contextToken(ctx, g.io.err); err != nil {
			return nil, err
		}
		tokenFrom = fmt.Sprintf("context %q", ctx.Name)
	}
	if err := checkTokenShape(token, tokenFrom); token != "" && err != nil {
		return nil, err
	}
	// The HTTP client trusts the context's pin, if any: a plain-HTTP server
	// has no TLS to check.
	t := &target{server: server, token: token, tokenSource: tokenFrom, ctx: ctx, stderr: g.io.err}
	var pin *x509.Certificate
	if ctx != nil && !strings.HasPrefix(server, "http://") {
		if pin, err = ctx.decodeCA(); err != nil {
			return nil, withHint(err, t.repin())
		}
	}
	t.setClient(pin, ctx != nil && ctx.Insecure) // insecure acts on TLS only
	g.warnPlainHTTP(server)
	return t, nil
}

// warnPlainHTTP warns when server is plain HTTP and not on loopback: the
// token would cross the network in the clear.
func (g *globals) warnPlainHTTP(server string) {
	if strings.HasPrefix(server, "http://") && !isLoopback(hostOf(server)) {
		fmt.Fprintf(g.io.err, "helyos: warning: %s is plain HTTP: the token and every answer cross the network unencrypted\n", server)
	}
}

func hostOf(server string) string {
	u, err := url.Parse(server)
	if err != nil {
		return ""
	}
	return u.Hostname()
}

// trustMode is how a client checks the daemon it dials.
type trustMode string

const (
	trustHTTP     trustMode = "http"     // plain HTTP: nothing to check
	trustInsecure trustMode = "insecure" // TLS, its certificate not checked
	trustPinned   trustMode = "pinned"   // TLS, checked against the pinned CA only
	trustSystem   trustMode = "system"   // TLS, checked against the system's CAs
)

// trustOf works out the trust mode for dialling and for showing alike. A
// context that sets both insecure and a pin is refused before it is dialled
// (decodeCA).
func trustOf(server string, insecure, pinned bool) trustMode {
	switch {
	case strings.HasPrefix(strings.ToLower(server), "http://"):
		return trustHTTP
	case insecure:
		return trustInsecure
	case pinned:
		return trustPinned
	}
	return trustSystem
}

// setClient makes the HTTP client t dials with: pinned to one CA, not
// checking at all when insecure, else checking with the system's CAs.
// With a token over plain HTTP it dials only a local peer that is ours.
func (t *target) setClient(pinned *x509.Certificate, insecure bool) {
	t.tlsMode = trustOf(t.server, insecure, pinned != nil)
	t.client = &http.Client{
		Timeout: requestTimeout,
		Transport: &http.Transport{
			TLSClientConfig:     clientTLSConfig(pinned, insecure),
			TLSHandshakeTimeout: 10 * time.Second,
			DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
			ForceAttemptHTTP2:   true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	t.guardPlainHTTP(t.stderr)
}

// contextToken reads a context's token from wherever the context says it
// is kept. Errors name the variable or command, never a token.
func contextToken(c *Context, stderr io.Writer) (tok string, err error) {
	switch {
	case countTrue(c.Token != "", c.TokenEnv != "", c.TokenCommand != "") > 1:
		return "", withHint(fmt.Errorf("context %q sets more than one of token, token-env and token-command", c.Name),
			fmt.Sprintf("keep one: helyos context set %s --token-env VAR (or --token-command CMD) replaces the others", c.Name))
	case c.TokenEnv != "":
		tok, err = envToken(c.TokenEnv)
	case c.TokenCommand != "":
		tok, err = runTokenCommand(c.TokenCommand, stderr)
	default:
		return c.Token, nil
	}
	if err != nil {
		return "", fmt.Errorf("context %q: %w", c.Name, err)
	}
	return tok, nil
}

// envToken reads a token from an environment variable: a login's
// --token-env once, a context's token-env at every use.
func envToken(name string) (string, error) {
	if tok := strings.TrimSpace(os.Getenv(name)); tok != "" {
		return tok, nil
	}
	return "", withHint(fmt.Errorf("$%s is unset or empty", name), "export "+name+"=<token> first")
}

// checkTokenShape refuses, before any request, a token that cannot be one
// of ours, so a typo is not reported as a revoked token. It never repeats
// the token; source names where it came from.
func checkTokenShape(token, source string) error {
	if _, ok := parseAPIToken(token); ok {
		return nil
	}
	return withHint(fmt.Errorf("the token from %s is not a helyos API token (want nxa-api_ and 64 hex characters)", source),
		"copy it again whole: 'helyos auth token create' prints it on one line")
}

// checkEnvName refuses a --token-env value that no shell could export, such
// as "$VAR" or "VAR=x", which would otherwise fail only at every later use.
func checkEnvName(name string) error {
	for i, c := range name {
		if c != '_' && !('A' <= c && c <= 'Z') && !('a' <= c && c <= 'z') && (i == 0 || !('0' <= c && c <= '9')) {
			return withHint(usageErrorf("--token-env %q is not an environment variable name", redactTokens(name)),
				"give the variable's name without the $, for example --token-env HELYOS_PROD_TOKEN")
		}
	}
	return nil
}

// runTokenCommand runs a credential helper the way git does: through sh -c,
// stdin closed, a time limit; the first line of its output is the token.
// What the helper wrote to stderr is passed on to stderr when it fails.
func runTokenCommand(command string, stderr io.Writer) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), tokenCommandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", command)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	tok := strings.TrimSpace(firstLine(out.String()))
	command = redactTokens(command) // for the messages below
	switch {
	case ctx.Err() != nil:
		err = fmt.Errorf("token command %q did not finish within %s", command, tokenCommandTimeout)
	case err != nil:
		err = fmt.Errorf("token command %q failed: %v", command, err)
	case tok == "":
		err = fmt.Errorf("token command %q printed no token on its standard output", command)
	}
	if err != nil {
		io.WriteString(stderr, redactTokens(errOut.String())) // sh: nxa-api_…: not found
		return "", err
	}
	return tok, nil
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return strings.TrimSuffix(line, "\r")
}

// apiError is an error answer from the daemon.
type apiError struct {
	status int
	msg    string
}

func (e *apiError) Error() string { return fmt.Sprintf("%s (HTTP %d)", e.msg, e.status) }

// call sends one request to the daemon and decodes a JSON answer into out
// (when out is not nil). It turns transport failures into errors that say
// what went wrong and what to do.
func (t *target) call(method, path string, body, out any) error {
	var reader io.Reader
	if body != nil {
		data, _ := json.Marshal(body) // maps of strings, numbers and string lists: cannot fail
		reader = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, t.server+path, reader)
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if t.token != "" {
		req.Header.Set("Authorization", "Bearer "+t.token)
	}
	resp, err := t.client.Do(req)
	if err != nil {
		return t.transportError(err)
	}
	defer resp.Body.Close()
	t.warnExpiry(resp.Header)
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return fmt.Errorf("read answer from %s: %w", t.server, err)
	}
	if resp.StatusCode >= 400 {
		return t.statusError(resp.StatusCode, data)
	}
	// Every route answers one success status: 200 to a GET, 201 to a POST,
	// 204 to a DELETE. Anything else, a proxy's redirect above all, must not
	// pass for success.
	if want := map[string]int{"GET": http.StatusOK, "POST": http.StatusCreated, "DELETE": http.StatusNoContent}[method]; resp.StatusCode != want {
		err := fmt.Errorf("%s answered HTTP %d to %s %s, not the %d it promises", t.server, resp.StatusCode, method, path, want)
		if loc := resp.Header.Get("Location"); loc != "" {
			return withHint(err, "helyos follows no redirect (this one points to "+sanitize(loc)+"); give the daemon's own address")
		}
		return err
	}
	if err := json.Unmarshal(data, out); out != nil && err != nil { // a *json.RawMessage keeps the answer as it came
		return fmt.Errorf("answer from %s %s is not the JSON expected: %w", method, path, err)
	}
	return nil
}

// warnExpiry warns, once per command, when the daemon says that the token
// in use expires within expiryWarning.
func (t *target) warnExpiry(h http.Header) {
	exp, err := time.Parse(time.RFC3339, h.Get("Helyos-Token-Expires"))
	left := time.Until(exp)
	if err != nil || t.stderr == nil || t.warned || left > expiryWarning {
		return
	}
	t.warned = true
	in := "under a minute" // also when this machine's clock runs ahead of the daemon's
	if left >= time.Minute {
		in = strings.TrimSuffix(left.Round(time.Minute).String(), "0s")
	}
	fmt.Fprintf(t.stderr, "helyos: warning: token %q expires in %s (%s); ask an admin to rotate it, or for a new one\n",
		h.Get("Helyos-Token-Name"), in, exp.UTC().Format(time.RFC3339))
}

func (t *target) statusError(status int, data []byte) error {
	var e struct{ Error string }
	if json.Unmarshal(data, &e) != nil || e.Error == "" {
		e.Error = cmp.Or(strings.TrimSpace(firstLine(string(data))), http.StatusText(status))
	}
	err := &apiError{status: status, msg: "the daemon answered: " + e.Error}
	switch status {
	case http.StatusUnauthorized:
		if t.token == "" {
			return withHint(fmt.Errorf("no API token for %s: %w", t.server, err), "log in with '"+t.relogin()+"', or set $HELYOS_API_TOKEN")
		}
		return withHint(fmt.Errorf("the token from %s was refused: %w", t.tokenSource, err),
			"it may be revoked or expired; mint a new one and run '"+t.relogin()+"'")
	case http.StatusBadRequest:
		if strings.Contains(string(data), "HTTP request to an HTTPS server") {
			return withHint(fmt.Errorf("%s: %w", t.server, err), "the daemon serves HTTPS: use https:// in the server address"+t.moveHint())
		}
	}
	return err
}

// relogin is the login that refreshes t's context rather than adding one.
func (t *target) relogin() string {
	if t.ctx == nil {
		return "helyos login " + t.server
	}
	return "helyos login " + t.server + " --name " + t.ctx.Name
}

// repin says how to replace a pin: a login without --ca-fingerprint would
// keep the old one.
func (t *target) repin() string {
	return "re-pin with the fingerprint the daemon's operator confirms: " + t.relogin() + " --ca-fingerprint FP"
}

// moveHint tells how to point t's context at where the daemon now is; the
// context keeps its token and pin.
func (t *target) moveHint() string {
	if t.ctx == nil {
		return ""
	}
	return "; if it now listens elsewhere: helyos context set " + t.ctx.Name + " --server URL"
}

func (t *target) transportError(err error) error {
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var verifyErr *tls.CertificateVerificationError
	var recordErr tls.RecordHeaderError
	var refused *hintError
	var dnsErr *net.DNSError
	switch {
	case errors.As(err, &refused): // checkPeer's, the only hint a dial carries: it says it all
		return refused
	case errors.As(err, &unknownCA), errors.As(err, &verifyErr):
		hint := "the daemon's CA is not the one pinned (made anew, or someone is in between); " + t.repin()
		if t.tlsMode == trustSystem {
			hint = "the system's CAs do not trust its certificate; pin the CA that signed it: " + t.relogin() + " (add --ca-file PEM for a certificate of your own)"
		}
		return withHint(fmt.Errorf("certificate problem talking to %s (%s trust): %w", t.server, t.tlsMode, err), hint)
	case errors.As(err, &hostErr):
		return withHint(fmt.Errorf("certificate problem talking to %s: %w", t.server, err),
			"dial a name the certificate carries, or restart the daemon with --advertise-addr / --tls-san for this name")
	case errors.As(err, &recordErr),
		// net/http turns the record header error into an unexported error
		// of its own when the answer is plain HTTP.
		strings.Contains(err.Error(), "server gave HTTP response to HTTPS client"):
		return withHint(fmt.Errorf("%s does not speak TLS: %w", t.server, err), "the daemon serves plain HTTP: use http:// in the server address")
	case errors.Is(err, syscall.ECONNREFUSED) && isLoopback(hostOf(t.server)):
		return withHint(fmt.Errorf("cannot reach %s: connection refused", t.server), "is the daemon running? start one with 'helyos daemon'"+t.moveHint())
	case errors.Is(err, syscall.ECONNREFUSED):
		return withHint(fmt.Errorf("cannot reach %s: connection refused", t.server),
			"is the daemon running there, on this port? On the server, 'helyos auth token create' prints the address to log in to"+t.moveHint())
	case errors.As(err, &dnsErr) && dnsErr.IsNotFound:
		return withHint(fmt.Errorf("cannot reach %s: no host is named %q", t.server, dnsErr.Name),
			"check the spelling of the host name, or give the daemon's IP address")
	}
	return fmt.Errorf("cannot reach %s: %w", t.server, err)
}

// fetchCA reads the daemon's CA from /api/v1/ca without verifying the
// connection: what protects the user is the fingerprint check that follows.
// It returns nil, nil for a daemon that has no self-signed CA.
func fetchCA(server string) (*x509.Certificate, error) {
	t := &target{server: server}
	t.setClient(nil, true)
	var answer struct{ PEM string }
	err := t.call("GET", "/api/v1/ca", nil, &answer)
	if apiErr, ok := errors.AsType[*apiError](err); ok && apiErr.status == http.StatusNotFound {
		return nil, nil // the daemon serves a certificate of its own
	}
	if err != nil {
		return nil, fmt.Errorf("fetch the daemon's CA: %w", err)
	}
	ca, err := parseCAPEM([]byte(answer.PEM))
	if err != nil {
		return nil, fmt.Errorf("the CA served by %s: %w", server, err)
	}
	if !ca.IsCA {
		return nil, fmt.Errorf("the certificate served by %s at /api/v1/ca is not a CA", server)
	}
	return ca, nil
}

func pemEncode(cert *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
}

// readEvents reads one connection's worth of the event stream and prints
// it. It returns nil when a listing (no --follow) has reached the live edge;
// otherwise why the stream ended, and whether it got anywhere first.
func (t *target) readEvents(emit func(name, data string), since string, lastID *string, follow bool) (progressed bool, err error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", t.server+"/api/v1/events?since="+url.QueryEscape(since), nil)
	if err != nil {
		return false, fmt.Errorf("build request: %w", err)
	}
	if *lastID != "" {
		req.Header.Set("Last-Event-ID", *lastID)
	}
	if t.token != "" {
		req.Header.Set("Authorization", "Bearer "+t.token)
	}
	client := *t.client
	client.Timeout = 0 // a stream has no end; eventIdleTimeout catches a dead one
	resp, err := client.Do(req)
	if err != nil {
		return false, t.transportError(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
		return false, t.statusError(resp.StatusCode, data)
	}
	idle := time.AfterFunc(eventIdleTimeout, cancel)
	defer idle.Stop()
	fields := map[string]string{} // of the event being read: id, event, data
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), maxResponseBytes)
	for sc.Scan() {
		idle.Reset(eventIdleTimeout)
		line := sc.Text()
		switch field, value, _ := strings.Cut(line, ": "); {
		case line == "": // the end of an event
			if fields["id"] != "" {
				*lastID, progressed = fields["id"], true
			}
			if fields["data"] != "" {
				emit(fields["event"], fields["data"])
			}
			clear(fields)
		case line == ": live" && !follow:
			return true, nil
		case field == "id", field == "event", field == "data": // and no other: a server cannot grow the map
			fields[field] = value
		}
	}
	return progressed, fmt.Errorf("the event stream from %s ended (%v)", t.server, cmp.Or(sc.Err(), io.EOF))
}
