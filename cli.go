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
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

const (
	defaultServer      = "http://localhost:6443"
	defaultPort        = "6443"
	expiryWarning      = 7 * 24 * time.Hour // warn when the token in use expires sooner
	requestTimeout     = 30 * time.Second
	tokenCommandTimout = 10 * time.Second
	maxResponseBytes   = 4 << 20
)

// stdio is where a command reads and writes; tests run the real binary, so
// these are the process's own streams.
type stdio struct {
	in       *os.File
	out, err io.Writer
}

// globals are the flags every client command accepts, before or after the
// command name.
type globals struct {
	context, server, token string
	json                   bool
	public                 bool // the command calls only public routes: resolve no token
	io                     *stdio
	flags                  *flag.FlagSet // the command's own flags, once it made them; completion reads them
}

// parseGlobals takes the global flags out of args wherever they stand (up
// to a "--") and returns the rest in order.
func parseGlobals(args []string, io *stdio) (*globals, []string, error) {
	g := &globals{io: io}
	strs := map[string]*string{"context": &g.context, "server": &g.server, "token": &g.token}
	var rest []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			rest = append(rest, args[i:]...)
			break
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") {
			rest = append(rest, a)
			continue
		}
		if name == "json" {
			b, err := strconv.ParseBool(value)
			if !hasValue {
				b, err = true, nil
			}
			if err != nil {
				return nil, nil, usageErrorf("--json takes no value or true/false, not %q", value)
			}
			g.json = b
			continue
		}
		p, ok := strs[name]
		if !ok {
			rest = append(rest, a)
			continue
		}
		if !hasValue {
			if i+1 >= len(args) {
				return nil, nil, usageErrorf("flag --%s needs a value", name)
			}
			i++
			value = args[i]
		}
		*p = value
	}
	return g, rest, nil
}

// newFlags makes a command's flag set; errors come back to the one error
// path instead of being printed by the flag package.
func (g *globals) newFlags(name, argsUsage, about string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	g.flags = fs
	fs.Usage = func() {
		fmt.Fprintf(g.io.err, "Usage: helyos %s %s\n\n%s\n", name, argsUsage, about)
		printFlags(g.io.err, fs)
		fmt.Fprintf(g.io.err, "\nGlobal flags: --context NAME, --server URL, --token TOKEN, --json\n")
	}
	return fs
}

// parseFlags parses args, allowing flags after the positional arguments
// (`auth token create ci --ttl 3600`), and checks how many positional
// arguments there are. It returns them.
func parseFlags(fs *flag.FlagSet, args []string, minArgs, maxArgs int) ([]string, error) {
	// The flag package calls Usage on every parse error; print the help
	// only when it was asked for.
	help := fs.Usage
	fs.Usage = func() {}
	defer func() { fs.Usage = help }()
	var positional []string
	for {
		err := fs.Parse(args)
		if errors.Is(err, flag.ErrHelp) {
			help()
			return nil, err
		}
		if err != nil {
			msg := err.Error() // the flag package spells a flag -name; we spell it --name
			if !strings.HasPrefix(msg, "bad flag syntax") {
				msg = strings.Replace(msg, " -", " --", 1)
			}
			return nil, withHint(usageErrorf("%s: %s", fs.Name(), redactTokens(msg)), "run 'helyos "+fs.Name()+" --help'")
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		positional = append(positional, args[0])
		args = args[1:]
	}
	if n := len(positional); n < minArgs || n > maxArgs {
		return nil, withHint(usageErrorf("%s: wrong number of arguments (%d)", fs.Name(), n), "run 'helyos "+fs.Name()+" --help'")
	}
	return positional, nil
}

// parseFlagsNoData is parseFlags for a command that prints no data: --json
// is refused there rather than silently ignored.
func (g *globals) parseFlagsNoData(fs *flag.FlagSet, args []string, minArgs, maxArgs int) ([]string, error) {
	pos, err := parseFlags(fs, args, minArgs, maxArgs)
	if err == nil && g.json {
		err = withHint(usageErrorf("%s prints no data: --json does not apply", fs.Name()), "drop --json; the exit code says whether it worked")
	}
	return pos, err
}

// normalizeServer turns what a person types into scheme://host:port:
// https:// when no scheme is given, :6443 when no port, IPv6 in brackets.
func normalizeServer(s string) (string, error) {
	raw := strings.TrimSpace(s)
	if raw == "" {
		return "", errors.New("server address is empty")
	}
	if tokenLikePattern.MatchString(strings.ToLower(raw)) { // and must not reach a DNS resolver
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
	port := u.Port()
	if port == "" {
		port = defaultPort
	}
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

// contextNameFor derives a context name from a server's host:
// https://helyos.acme.internal:6443 → helyos-acme-internal.
func contextNameFor(server string) string {
	host := server
	if u, err := url.Parse(server); err == nil && u.Hostname() != "" {
		host = u.Hostname()
	}
	var b strings.Builder
	dash := false
	for _, c := range strings.ToLower(host) {
		if (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') {
			if dash && b.Len() > 0 {
				b.WriteByte('-')
			}
			b.WriteRune(c)
			dash = false
		} else {
			dash = true
		}
	}
	if b.Len() == 0 || b.Len() > 60 {
		return "helyos"
	}
	return b.String()
}

func checkContextName(name string) error {
	if err := checkName("context", name); err != nil {
		return &usageError{err.Error()}
	}
	return nil
}

var errSeveralContexts = errors.New("several contexts exist and none is current")

// activeContext picks the context a command works against: --context, then
// $HELYOS_CONTEXT, then current-context, then the only context there is.
// It returns nil when there is no context at all.
func (g *globals) activeContext(cfg *Config) (*Context, error) {
	name, from := g.context, "--context"
	if name == "" {
		name, from = os.Getenv("HELYOS_CONTEXT"), "$HELYOS_CONTEXT"
	}
	if name == "" {
		name, from = cfg.CurrentContext, "current-context"
	}
	if name != "" {
		if c := cfg.Context(name); c != nil {
			return c, nil
		}
		return nil, withHint(fmt.Errorf("context %q (from %s) does not exist", name, from), "run 'helyos context ls' to see the contexts")
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
	tlsMode     string    // pinned, system, insecure, http
	stderr      io.Writer // for the expiry warning; nil: none
	warned      bool      // the expiry warning was given
}

// resolve applies the precedence rules: flag > environment > context >
// built-in default. A context's token and trust apply only when its own
// server is the one dialled.
func (g *globals) resolve() (*target, error) {
	path, err := configPath()
	if err != nil {
		return nil, err
	}
	cfg, err := loadConfig(path)
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
	ctx, err := g.activeContext(cfg)
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
	t := &target{server: server, token: token, tokenSource: tokenFrom, ctx: ctx, stderr: g.io.err}
	if err := t.setTrust(); err != nil {
		return nil, err
	}
	t.guardPlainHTTP(g.io.err)
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

// setTrust builds the HTTP client for t from its context's pin, if any.
func (t *target) setTrust() error {
	var pinned *x509.Certificate
	insecure := false
	switch {
	case strings.HasPrefix(t.server, "http://"):
		t.tlsMode = "http"
	case t.ctx != nil && t.ctx.CA != "": // refused with insecure = true
		pemBytes, err := t.ctx.decodeCA()
		if err == nil {
			pinned, err = parseCAPEM(pemBytes)
		}
		if err != nil {
			return withHint(fmt.Errorf("context %q: pinned CA: %w", t.ctx.Name, err), t.repin())
		}
		t.tlsMode = "pinned"
	case t.ctx != nil && t.ctx.Insecure:
		t.tlsMode, insecure = "insecure", true
	default:
		t.tlsMode = "system"
	}
	t.client = newHTTPClient(clientTLSConfig(pinned, insecure))
	return nil
}

func newHTTPClient(tlsConfig *tls.Config) *http.Client {
	return &http.Client{
		Timeout: requestTimeout,
		Transport: &http.Transport{
			TLSClientConfig:     tlsConfig,
			TLSHandshakeTimeout: 10 * time.Second,
			DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
			ForceAttemptHTTP2:   true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// contextToken reads a context's token from wherever the context says it
// is kept. Errors name the variable or command, never a token.
func contextToken(c *Context, stderr io.Writer) (string, error) {
	if countTrue(c.Token != "", c.TokenEnv != "", c.TokenCommand != "") > 1 {
		return "", withHint(fmt.Errorf("context %q sets more than one of token, token-env and token-command", c.Name),
			fmt.Sprintf("keep one: helyos context set %s --token-env VAR (or --token-command CMD) replaces the others", c.Name))
	}
	switch {
	case c.TokenEnv != "":
		v := strings.TrimSpace(os.Getenv(c.TokenEnv))
		if v == "" {
			return "", withHint(fmt.Errorf("context %q reads its token from $%s, which is unset or empty", c.Name, c.TokenEnv),
				"export "+c.TokenEnv+"=<token> first")
		}
		return v, nil
	case c.TokenCommand != "":
		tok, err := runTokenCommand(c.TokenCommand, stderr)
		if err != nil {
			return "", fmt.Errorf("context %q: %w", c.Name, err)
		}
		return tok, nil
	}
	return c.Token, nil
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

// countTrue counts the token sources given; at most one is allowed.
func countTrue(conds ...bool) int {
	n := 0
	for _, c := range conds {
		if c {
			n++
		}
	}
	return n
}

// runTokenCommand runs a credential helper the way git does: through sh -c,
// stdin closed, a time limit; the first line of its output is the token.
// What the helper wrote to stderr is passed on to stderr when it fails.
func runTokenCommand(command string, stderr io.Writer) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), tokenCommandTimout)
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
		err = fmt.Errorf("token command %q did not finish within %s", command, tokenCommandTimout)
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
		data, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
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
	// Every route answers one success status (SPEC §2); anything else, a
	// proxy's redirect above all, must not pass for success.
	if want := map[string]int{"GET": http.StatusOK, "POST": http.StatusCreated, "DELETE": http.StatusNoContent}[method]; resp.StatusCode != want {
		err := fmt.Errorf("%s answered HTTP %d to %s %s, not the %d it promises", t.server, resp.StatusCode, method, path, want)
		if loc := resp.Header.Get("Location"); loc != "" {
			return withHint(err, "helyos follows no redirect (this one points to "+sanitize(loc)+"); give the daemon's own address")
		}
		return err
	}
	if out == nil {
		return nil
	}
	if raw, ok := out.(*json.RawMessage); ok {
		*raw = data
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
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
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(data, &e) != nil || e.Error == "" {
		e.Error = strings.TrimSpace(firstLine(string(data)))
		if e.Error == "" {
			e.Error = http.StatusText(status)
		}
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
	case errors.As(err, &refused): // checkPeer's, which says it all
		return refused
	case errors.As(err, &unknownCA), errors.As(err, &verifyErr):
		hint := "the daemon's CA is not the one pinned (made anew, or someone is in between); " + t.repin()
		if t.tlsMode == "system" {
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

// printJSON writes v (or raw JSON) to stdout with two-space indentation.
func (g *globals) printJSON(v any) error {
	var data []byte
	if raw, ok := v.(json.RawMessage); ok {
		var buf bytes.Buffer
		if err := json.Indent(&buf, raw, "", "  "); err != nil {
			return fmt.Errorf("format JSON: %w", err)
		}
		data = buf.Bytes()
	} else {
		var err error
		if data, err = json.MarshalIndent(v, "", "  "); err != nil {
			return fmt.Errorf("format JSON: %w", err)
		}
	}
	// Indented JSON holds no raw newline but its line breaks: sanitize each
	// line, escaping inside strings what a server may have sent raw.
	lines := strings.Split(string(data), "\n")
	for i := range lines {
		lines[i] = sanitize(lines[i])
	}
	_, err := fmt.Fprintln(g.io.out, strings.Join(lines, "\n"))
	return err
}

func (g *globals) table() *tabwriter.Writer {
	return tabwriter.NewWriter(g.io.out, 0, 4, 2, ' ', 0)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func formatTime(t *time.Time, unset string) string {
	if t == nil {
		return unset
	}
	return t.UTC().Format(time.RFC3339)
}

// ---- whoami, status, version ----

func cmdWhoami(g *globals, args []string) error {
	fs := g.newFlags("whoami", "", "Show the identity of the token in use.")
	if _, err := parseFlags(fs, args, 0, 0); err != nil {
		return err
	}
	t, err := g.resolve()
	if err != nil {
		return err
	}
	warnLooseConfig(g)
	var raw json.RawMessage
	if err := t.call("GET", "/api/v1/whoami", nil, &raw); err != nil {
		return err
	}
	if g.json {
		return g.printJSON(raw)
	}
	var info tokenInfo
	if err := json.Unmarshal(raw, &info); err != nil {
		return fmt.Errorf("decode whoami answer: %w", err)
	}
	tw := g.table()
	fmt.Fprintf(tw, "name:\t%s\nscope:\t%s\nexpires:\t%s\nlast used:\t%s\nallowed from:\t%s\n", sanitize(info.Name), sanitize(info.Scope), formatTime(info.ExpiresAt, "never"), formatTime(info.LastUsedAt, "never"), allowedFrom(info.AllowFrom))
	return tw.Flush()
}

func cmdStatus(g *globals, args []string) error {
	fs := g.newFlags("status", "", "Check the daemon: reachable, its version, the TLS trust in use, and who you are.")
	if _, err := parseFlags(fs, args, 0, 0); err != nil {
		return err
	}
	t, err := g.resolve()
	if err != nil {
		return err
	}
	var ver struct {
		Version string `json:"version"`
		API     string `json:"api"`
	}
	if err := t.call("GET", "/api/v1/version", nil, &ver); err != nil {
		return err
	}
	st := struct {
		Server  string     `json:"server"`
		Context string     `json:"context"`
		Version string     `json:"version"`
		TLS     string     `json:"tls"`
		Whoami  *tokenInfo `json:"whoami"`
		Auth    string     `json:"auth"`
	}{Server: t.server, Version: ver.Version, TLS: t.tlsMode, Auth: "no token"}
	if t.ctx != nil {
		st.Context = t.ctx.Name
	}
	if t.token != "" {
		var info tokenInfo
		if err := t.call("GET", "/api/v1/whoami", nil, &info); err != nil {
			st.Auth = "refused: " + err.Error()
		} else {
			st.Whoami, st.Auth = &info, "ok"
		}
	}
	if g.json {
		return g.printJSON(st)
	}
	tw := g.table()
	fmt.Fprintf(tw, "server:\t%s\ncontext:\t%s\nversion:\t%s (api %s)\ntls:\t%s\n", st.Server, orDash(st.Context), sanitize(st.Version), sanitize(ver.API), st.TLS)
	if st.Whoami != nil {
		fmt.Fprintf(tw, "auth:\tok, as %q (scope %s)\n", st.Whoami.Name, sanitize(st.Whoami.Scope))
	} else {
		fmt.Fprintf(tw, "auth:\t%s\n", sanitize(redactTokens(st.Auth)))
	}
	return tw.Flush()
}

func cmdVersion(g *globals, args []string) error {
	fs := g.newFlags("version", "", "Print the client's version and, when it can be reached, the daemon's.")
	if _, err := parseFlags(fs, args, 0, 0); err != nil {
		return err
	}
	v := struct {
		Client string `json:"client"`
		Server string `json:"server,omitempty"`
	}{Client: buildVersion()}
	g.public = true
	t, err := g.resolve()
	if err == nil {
		var ver struct {
			Version string `json:"version"`
		}
		if err = t.call("GET", "/api/v1/version", nil, &ver); err == nil {
			v.Server = ver.Version
		}
	}
	if g.json {
		if perr := g.printJSON(v); perr != nil {
			return perr
		}
	} else {
		fmt.Fprintf(g.io.out, "client: %s\n", v.Client)
		if v.Server != "" {
			fmt.Fprintf(g.io.out, "server: %s\n", sanitize(v.Server))
		}
	}
	// The client's version is the answer; a daemon that cannot be reached
	// is worth a warning, not a failure.
	if err != nil {
		fmt.Fprintf(g.io.err, "helyos: warning: no server version: %s\n", sanitize(redactTokens(err.Error())))
	}
	return nil
}

// warnLooseConfig warns when the config file, which may hold tokens, is
// readable by others.
func warnLooseConfig(g *globals) {
	path, err := configPath()
	if err != nil {
		return
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		fmt.Fprintf(g.io.err, "helyos: warning: %s is readable by others (mode %04o); run: chmod 600 %s\n", path, fi.Mode().Perm(), path)
	}
}

// ---- login, logout ----

func cmdLogin(g *globals, args []string) error {
	fs := g.newFlags("login", "SERVER", "Check a token against a daemon, pin the daemon's CA, and save both as a context.\nSERVER without a scheme gets https://, without a port :6443.")
	fs.String("token", "", "API `token`, seen by ps and shell history: prefer --token-stdin, --token-env or the prompt")
	tokenStdin := fs.Bool("token-stdin", false, "read the API token from stdin (one line; on a terminal, a paste that is not echoed)")
	tokenEnv := fs.String("token-env", "", "read the token from environment `VAR` now and at every use; the file keeps only the name")
	tokenCommand := fs.String("token-command", "", "run `command` (sh -c) now and at every use; the first line it prints is the token")
	caFile := fs.String("ca-file", "", "pin the CA in this PEM `file` instead of fetching it")
	caFingerprint := fs.String("ca-fingerprint", "", "require the daemon's CA to have this SHA-256 `fingerprint`; no prompt")
	insecure := fs.Bool("insecure-skip-tls-verify", false, "skip TLS verification entirely (insecure: exposes the token)")
	name := fs.String("name", "", "context `name` (default: derived from the host)")
	project := fs.String("project", "", "default `project` for this context")
	noSetCurrent := fs.Bool("no-set-current", false, "do not make this context the current one")
	pos, err := g.parseFlagsNoData(fs, args, 1, 1)
	if err != nil {
		return err
	}
	server, err := normalizeServer(pos[0])
	if err != nil {
		return withHint(usageErrorf("login: %v", err), "give a server like cluster.example.com or https://10.0.0.5:6443")
	}
	if err := checkLoginFlags(g, server, *tokenStdin, *tokenEnv, *tokenCommand, *caFile, *caFingerprint, *insecure); err != nil {
		return err
	}
	g.warnPlainHTTP(server)
	if *name != "" {
		if err := checkContextName(*name); err != nil {
			return err
		}
	}
	path, err := configPath()
	if err != nil {
		return err
	}
	cfg, err := loadConfig(path)
	if err != nil {
		return err
	}
	_, existing := loginContextName(cfg, server, *name)
	if err := checkSameServer(existing, server); err != nil {
		return err
	}

	pin, err := g.loginTrust(server, existing, *caFile, *caFingerprint, *insecure)
	if err != nil {
		return err
	}
	token, source, err := g.loginToken(*tokenStdin, *tokenEnv, *tokenCommand)
	if err == nil {
		err = checkTokenShape(token, source)
	}
	if err != nil {
		return err
	}
	t := &target{server: server, token: token, tokenSource: source, ctx: existing, client: newHTTPClient(clientTLSConfig(pin, *insecure)), tlsMode: "system", stderr: g.io.err}
	switch {
	case strings.HasPrefix(server, "http://"):
		t.tlsMode = "http"
	case *insecure:
		t.tlsMode = "insecure"
	case pin != nil:
		t.tlsMode = "pinned"
	}
	t.guardPlainHTTP(g.io.err)
	var who tokenInfo
	if err := t.call("GET", "/api/v1/whoami", nil, &who); err != nil {
		return fmt.Errorf("login to %s failed, nothing was saved: %w", server, err)
	}

	var saved string
	err = updateConfig(path, func(cfg *Config) error {
		ctxName, c := loginContextName(cfg, server, *name)
		if err := checkSameServer(c, server); err != nil {
			return err // created by another process since the check above
		}
		if c == nil {
			c = &Context{Name: ctxName}
			cfg.Contexts = append(cfg.Contexts, c)
		}
		c.Server, c.TokenName, c.Insecure = server, who.Name, *insecure
		c.Token, c.TokenEnv, c.TokenCommand = token, *tokenEnv, *tokenCommand
		if *tokenEnv != "" || *tokenCommand != "" {
			c.Token = ""
		}
		if *project != "" {
			c.Project = *project
		}
		c.CA, c.CASHA256 = "", ""
		if pin != nil {
			c.CA = encodeCA(pemEncode(pin))
			c.CASHA256 = fingerprint(pin.Raw)
		}
		if !*noSetCurrent {
			cfg.CurrentContext = ctxName
		}
		saved = ctxName
		return nil
	})
	if err != nil {
		return fmt.Errorf("save context: %w", err)
	}
	fmt.Fprintf(g.io.err, "logged in to %s as %q (scope %s); saved as context %q", server, who.Name, sanitize(who.Scope), saved)
	if !*noSetCurrent {
		fmt.Fprint(g.io.err, ", now current")
	}
	fmt.Fprintln(g.io.err)
	return nil
}

func checkLoginFlags(g *globals, server string, tokenStdin bool, tokenEnv, tokenCommand, caFile, caFingerprint string, insecure bool) error {
	if countTrue(g.token != "", tokenStdin, tokenEnv != "", tokenCommand != "") > 1 {
		return usageErrorf("login: give the token one way only: --token, --token-stdin, --token-env or --token-command")
	}
	if err := checkTokenShape(g.token, "--token"); g.token != "" && err != nil {
		return err
	}
	if err := checkEnvName(tokenEnv); err != nil {
		return err
	}
	if insecure && (caFile != "" || caFingerprint != "") {
		return usageErrorf("login: --insecure-skip-tls-verify cannot be combined with --ca-file or --ca-fingerprint")
	}
	if strings.HasPrefix(server, "http://") && (insecure || caFile != "" || caFingerprint != "") {
		return usageErrorf("login: %s is plain HTTP; TLS flags do not apply", server)
	}
	if caFingerprint != "" {
		if _, err := normalizeFingerprint(caFingerprint); err != nil {
			return usageErrorf("login: --ca-fingerprint: %v", err)
		}
	}
	return nil
}

// loginContextName picks the context a login writes. With --name, that
// name. Otherwise the name derived from the host, then NAME-2, NAME-3, …:
// the first that is free, or that already holds this same server (reused,
// with its pin, so logging in again needs no prompt).
func loginContextName(cfg *Config, server, name string) (string, *Context) {
	if name != "" {
		return name, cfg.Context(name)
	}
	base := contextNameFor(server)
	for i := 1; ; i++ {
		cand := base
		if i > 1 {
			cand = base + "-" + strconv.Itoa(i)
		}
		if c := cfg.Context(cand); c == nil || sameServer(c.Server, server) {
			return cand, c
		}
	}
}

// checkSameServer refuses a login --name that would replace a context of
// another server (its token and pin included), as LXD refuses a remote that
// exists.
func checkSameServer(c *Context, server string) error {
	if c == nil || sameServer(c.Server, server) {
		return nil
	}
	return withHint(fmt.Errorf("context %q already exists for %s; nothing was saved", c.Name, c.Server),
		fmt.Sprintf("pick another --name, or remove it first with 'helyos context rm %s'", c.Name))
}

// loginTrust decides which CA the login pins: --ca-file, the CA the
// daemon serves once its fingerprint matches --ca-fingerprint or a person
// confirms it, or the pin an existing context for this server already
// holds. It returns nil for plain HTTP, --insecure-skip-tls-verify, and a
// daemon with a certificate of its own, which the system's CAs then check.
func (g *globals) loginTrust(server string, existing *Context, caFile, caFingerprint string, insecure bool) (*x509.Certificate, error) {
	if strings.HasPrefix(server, "http://") || insecure {
		return nil, nil
	}
	if caFile != "" {
		data, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("read --ca-file: %w", err)
		}
		ca, err := parseCAPEM(data)
		if err != nil {
			return nil, fmt.Errorf("--ca-file %s: %w", caFile, err)
		}
		if caFingerprint != "" && !sameFingerprint(caFingerprint, fingerprint(ca.Raw)) {
			return nil, fmt.Errorf("--ca-file %s has fingerprint %s, not the %s given with --ca-fingerprint", caFile, fingerprint(ca.Raw), caFingerprint)
		}
		return ca, nil
	}
	if caFingerprint == "" && existing != nil && sameServer(existing.Server, server) && existing.CA != "" {
		pemBytes, err := existing.decodeCA()
		if err != nil {
			return nil, withHint(err, (&target{server: server, ctx: existing}).repin())
		}
		return parseCAPEM(pemBytes)
	}
	ca, err := fetchCA(server)
	switch {
	case err != nil:
		return nil, err
	case ca == nil && caFingerprint != "":
		return nil, withHint(fmt.Errorf("%s has no self-signed CA to pin: it serves a certificate of its own", server),
			"drop --ca-fingerprint to let the system's trusted CAs check it, or pass --ca-file PEM with the CA that signed it")
	case ca == nil:
		fmt.Fprintf(g.io.err, "%s serves a certificate of its own, not a self-signed CA to pin: the system's trusted CAs check it\n", server)
		return nil, nil
	}
	fp := fingerprint(ca.Raw)
	if caFingerprint != "" {
		if !sameFingerprint(caFingerprint, fp) {
			return nil, withHint(fmt.Errorf("the CA served by %s has fingerprint %s, not the expected %s: refusing to pin it (a possible man-in-the-middle); nothing was saved", server, fp, caFingerprint),
				"ask the daemon's operator for the real one: the daemon logs it at start, and on the server 'openssl x509 -noout -fingerprint -sha256 -in DATA_DIR/ca.pem' prints it")
		}
		return ca, nil
	}
	if !isTerminal(g.io.in) {
		return nil, withHint(fmt.Errorf("refusing to pin the CA of %s without confirmation, and this is not a terminal; its SHA-256 fingerprint is %s", server, fp),
			"verify the fingerprint out of band, then pass --ca-fingerprint "+fp+" (or --ca-file PEM)")
	}
	fmt.Fprintf(g.io.err, "The server %s presented a self-signed CA:\nSHA-256: %s\n", server, fp)
	ok, err := promptYesNo(g.io.in, g.io.err, "Trust and pin this CA?")
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, errors.New("the CA was not trusted; nothing was saved")
	}
	return ca, nil
}

// fetchCA reads the daemon's CA from /api/v1/ca without verifying the
// connection: what protects the user is the fingerprint check that follows.
// It returns nil, nil for a daemon that has no self-signed CA.
func fetchCA(server string) (*x509.Certificate, error) {
	t := &target{server: server, client: newHTTPClient(clientTLSConfig(nil, true)), tlsMode: "insecure"}
	var answer struct {
		PEM string `json:"pem"`
	}
	err := t.call("GET", "/api/v1/ca", nil, &answer)
	var apiErr *apiError
	if errors.As(err, &apiErr) && apiErr.status == http.StatusNotFound {
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

// loginToken finds the token to log in with: --token, --token-stdin,
// --token-env, --token-command, $HELYOS_API_TOKEN, then a prompt that does
// not echo. The second result names the source for messages.
func (g *globals) loginToken(tokenStdin bool, tokenEnv, tokenCommand string) (string, string, error) {
	switch {
	case g.token != "":
		return g.token, "--token", nil
	case tokenStdin && isTerminal(g.io.in):
		tok, err := promptSecret(g.io.in, g.io.err, "API token: ")
		return tok, "the prompt", err
	case tokenStdin:
		line, err := readLine(g.io.in)
		if err != nil && err != io.EOF {
			return "", "", fmt.Errorf("read token from stdin: %w", err)
		}
		if line = strings.TrimSpace(line); line == "" {
			return "", "", errors.New("--token-stdin: stdin held no token")
		}
		return line, "stdin", nil
	case tokenEnv != "":
		tok := strings.TrimSpace(os.Getenv(tokenEnv))
		if tok == "" {
			return "", "", withHint(fmt.Errorf("--token-env: $%s is unset or empty", tokenEnv), "export "+tokenEnv+"=<token> first")
		}
		return tok, "$" + tokenEnv, nil
	case tokenCommand != "":
		tok, err := runTokenCommand(tokenCommand, g.io.err)
		return tok, "--token-command", err
	case os.Getenv("HELYOS_API_TOKEN") != "":
		return os.Getenv("HELYOS_API_TOKEN"), "$HELYOS_API_TOKEN", nil
	case isTerminal(g.io.in):
		tok, err := promptSecret(g.io.in, g.io.err, "API token: ")
		if err == nil && tok == "" {
			err = errors.New("no token entered")
		}
		return tok, "the prompt", err
	}
	return "", "", withHint(errors.New("no API token given, and this is not a terminal to ask for one"),
		"pass --token-stdin and pipe it in, or set $HELYOS_API_TOKEN")
}

func pemEncode(cert *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
}

func cmdLogout(g *globals, args []string) error {
	fs := g.newFlags("logout", "[NAME]", "Forget the token of a context (default: the active one). Its server, CA pin and project stay, so logging in again is one command.")
	pos, err := g.parseFlagsNoData(fs, args, 0, 1)
	if err != nil {
		return err
	}
	pos = append(pos, "") // NAME is optional
	path, err := configPath()
	if err != nil {
		return err
	}
	var name, again string
	err = updateConfig(path, func(cfg *Config) error {
		c, err := g.namedOrActive(cfg, pos[0])
		if err != nil {
			return err
		}
		c.Token, c.TokenName, c.TokenEnv, c.TokenCommand = "", "", "", ""
		name, again = c.Name, "helyos login "+c.Server
		// A bare login would pick the name derived from the host; point it
		// back at this context when that is another one (say "local").
		if derived, _ := loginContextName(cfg, c.Server, ""); derived != c.Name {
			again += " --name " + c.Name
		}
		return nil
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(g.io.err, "logged out of context %q; its server and CA pin are kept: log in again with '%s'\n", name, again)
	return nil
}

// namedOrActive is the context called name, or the active one when name is
// empty.
func (g *globals) namedOrActive(cfg *Config, name string) (*Context, error) {
	if name != "" {
		if c := cfg.Context(name); c != nil {
			return c, nil
		}
		return nil, withHint(fmt.Errorf("context %q does not exist", name), "run 'helyos context ls' to see the contexts")
	}
	c, err := g.activeContext(cfg)
	if err == nil && c == nil {
		err = withHint(errors.New("there are no contexts"), "log in first: helyos login SERVER")
	}
	return c, err
}

// ---- context ----

func contextCommands() map[string]func(*globals, []string) error {
	return map[string]func(*globals, []string) error{
		"ls": cmdContextList, "list": cmdContextList, "use": cmdContextUse, "current": cmdContextCurrent,
		"rename": cmdContextRename, "rm": cmdContextRemove, "set": cmdContextSet,
	}
}

func cmdContext(g *globals, args []string) error {
	subs := contextCommands()
	if len(args) == 0 || subs[args[0]] == nil {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			fmt.Fprint(g.io.err, contextUsage)
			return flag.ErrHelp
		}
		fmt.Fprint(g.io.err, contextUsage)
		return subcommandError("context", strings.Join(args[:min(len(args), 1)], " "), "ls, use, current, rename, rm or set")
	}
	return subs[args[0]](g, args[1:])
}

const contextUsage = `Usage: helyos context SUBCOMMAND

  ls (list)            list contexts; * marks the active one
  use NAME             make NAME the current context
  current              print the active context
  rename OLD NEW       rename a context
  rm NAME              remove a context (server, token and pin)
  set NAME [--server URL] [--project P] [--token-env VAR | --token-command CMD]
                       edit a context, or create one that trusts the system roots
`

// contextView is how `context ls` shows a context: never its token.
type contextView struct {
	Name        string `json:"name"`
	Server      string `json:"server"`
	Project     string `json:"project"`
	TLS         string `json:"tls"`
	TokenSource string `json:"token_source"`
	Active      bool   `json:"active"`
}

func viewOf(c *Context, active *Context) contextView {
	v := contextView{Name: c.Name, Server: c.Server, Project: c.Project, TLS: "system", TokenSource: "-", Active: c == active}
	switch {
	case strings.HasPrefix(strings.ToLower(c.Server), "http://"):
		v.TLS = "http"
	case c.Insecure:
		v.TLS = "insecure"
	case c.CA != "":
		v.TLS = "pinned"
	}
	switch {
	case c.TokenEnv != "":
		v.TokenSource = "env:" + c.TokenEnv
	case c.TokenCommand != "":
		v.TokenSource = "command"
	case c.Token != "":
		v.TokenSource = "token"
	}
	return v
}

func loadClientConfig() (string, *Config, error) {
	path, err := configPath()
	if err != nil {
		return "", nil, err
	}
	cfg, err := loadConfig(path)
	return path, cfg, err
}

func cmdContextList(g *globals, args []string) error {
	fs := g.newFlags("context ls", "", "List contexts; * marks the active one.")
	if _, err := parseFlags(fs, args, 0, 0); err != nil {
		return err
	}
	_, cfg, err := loadClientConfig()
	if err != nil {
		return err
	}
	warnLooseConfig(g)
	active, _ := g.activeContext(cfg)
	views := []contextView{}
	for _, c := range cfg.Contexts {
		views = append(views, viewOf(c, active))
	}
	if g.json {
		return g.printJSON(views)
	}
	tw := g.table()
	fmt.Fprintln(tw, "CURRENT\tNAME\tSERVER\tPROJECT\tTLS\tTOKEN")
	for _, v := range views {
		mark := ""
		if v.Active {
			mark = "*"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", mark, v.Name, v.Server, orDash(v.Project), v.TLS, v.TokenSource)
	}
	return tw.Flush()
}

func cmdContextUse(g *globals, args []string) error {
	fs := g.newFlags("context use", "NAME", "Make NAME the current context.")
	pos, err := g.parseFlagsNoData(fs, args, 1, 1)
	if err != nil {
		return err
	}
	path, err := configPath()
	if err != nil {
		return err
	}
	err = updateConfig(path, func(cfg *Config) error {
		c, err := g.namedOrActive(cfg, pos[0])
		if err == nil {
			cfg.CurrentContext = c.Name
		}
		return err
	})
	if err == nil {
		fmt.Fprintf(g.io.err, "switched to context %q\n", pos[0])
	}
	return err
}

func cmdContextCurrent(g *globals, args []string) error {
	fs := g.newFlags("context current", "", "Print the active context: --context, else $HELYOS_CONTEXT, else current-context, else the only one.")
	if _, err := parseFlags(fs, args, 0, 0); err != nil {
		return err
	}
	_, cfg, err := loadClientConfig()
	if err != nil {
		return err
	}
	c, err := g.namedOrActive(cfg, "")
	if err != nil {
		return err
	}
	if g.json {
		return g.printJSON(viewOf(c, c))
	}
	fmt.Fprintln(g.io.out, c.Name)
	return nil
}

func cmdContextRename(g *globals, args []string) error {
	fs := g.newFlags("context rename", "OLD NEW", "Rename a context.")
	pos, err := g.parseFlagsNoData(fs, args, 2, 2)
	if err != nil {
		return err
	}
	oldName, newName := pos[0], pos[1]
	if err := checkContextName(newName); err != nil {
		return err
	}
	path, err := configPath()
	if err != nil {
		return err
	}
	err = updateConfig(path, func(cfg *Config) error {
		c, err := g.namedOrActive(cfg, oldName)
		if err != nil {
			return err
		}
		if cfg.Context(newName) != nil {
			return withHint(fmt.Errorf("context %q already exists", newName), "remove it first with 'helyos context rm "+newName+"', or pick another name")
		}
		c.Name = newName
		if cfg.CurrentContext == oldName {
			cfg.CurrentContext = newName
		}
		return nil
	})
	if err == nil {
		fmt.Fprintf(g.io.err, "renamed context %q to %q\n", oldName, newName)
	}
	return err
}

func cmdContextRemove(g *globals, args []string) error {
	fs := g.newFlags("context rm", "NAME", "Remove a context: its server, token and pinned CA.")
	pos, err := g.parseFlagsNoData(fs, args, 1, 1)
	if err != nil {
		return err
	}
	path, err := configPath()
	if err != nil {
		return err
	}
	name := pos[0]
	err = updateConfig(path, func(cfg *Config) error {
		if _, err := g.namedOrActive(cfg, name); err != nil {
			return err
		}
		cfg.Remove(name)
		if cfg.CurrentContext == name {
			cfg.CurrentContext = ""
		}
		return nil
	})
	if err == nil {
		fmt.Fprintf(g.io.err, "removed context %q\n", name)
	}
	return err
}

func cmdContextSet(g *globals, args []string) error {
	fs := g.newFlags("context set", "NAME [--server URL] [--project P] [--token-env VAR | --token-command CMD]",
		"Edit a context, or create one. A context created here pins no CA: it trusts the system roots.")
	fs.String("server", "", "daemon `URL`")
	project := fs.String("project", "", "default `project`")
	tokenEnv := fs.String("token-env", "", "read the token from environment `VAR` at every use")
	tokenCommand := fs.String("token-command", "", "run `command` (sh -c) at every use; its first line is the token")
	pos, err := g.parseFlagsNoData(fs, args, 1, 1)
	if err != nil {
		return err
	}
	name := pos[0]
	if err := checkContextName(name); err != nil {
		return err
	}
	if g.token != "" {
		return withHint(usageErrorf("context set does not store --token"), "log in to save a checked token: helyos login SERVER --name "+name+", or use --token-env / --token-command")
	}
	if *tokenEnv != "" && *tokenCommand != "" {
		return usageErrorf("context set: give --token-env or --token-command, not both")
	}
	if err := checkEnvName(*tokenEnv); err != nil {
		return err
	}
	server := ""
	if g.server != "" {
		var err error
		if server, err = normalizeServer(g.server); err != nil {
			return usageErrorf("context set: --server: %v", err)
		}
	}
	path, err := configPath()
	if err != nil {
		return err
	}
	created := false
	err = updateConfig(path, func(cfg *Config) error {
		c := cfg.Context(name)
		if c == nil {
			if server == "" {
				return withHint(fmt.Errorf("context %q does not exist", name), "create it with: helyos context set "+name+" --server URL")
			}
			c, created = &Context{Name: name}, true
			cfg.Contexts = append(cfg.Contexts, c)
		}
		if old, _ := normalizeServer(c.Server); strings.HasPrefix(old, "https://") && strings.HasPrefix(server, "http://") {
			return withHint(fmt.Errorf("context %q uses HTTPS; refusing to switch it to plain HTTP (%s), which would send its token unencrypted", name, server),
				"for a deliberate plain-HTTP daemon, log in to a context of its own: helyos login "+server+" --name NAME")
		}
		if server != "" {
			c.Server = server
		}
		if *project != "" {
			c.Project = *project
		}
		if *tokenEnv != "" || *tokenCommand != "" {
			c.Token, c.TokenEnv, c.TokenCommand = "", *tokenEnv, *tokenCommand
		}
		return nil
	})
	if err != nil {
		return err
	}
	verb := "updated"
	if created {
		verb = "created"
	}
	fmt.Fprintf(g.io.err, "%s context %q\n", verb, name)
	return nil
}

// ---- auth token ----

func tokenCommands() map[string]func(*globals, []string) error {
	return map[string]func(*globals, []string) error{
		"create": cmdTokenCreate, "ls": cmdTokenList, "list": cmdTokenList, "revoke": cmdTokenRevoke, "rotate": cmdTokenRotate,
	}
}

func cmdAuth(g *globals, args []string) error {
	subs := tokenCommands()
	if len(args) > 1 && args[0] == "token" && subs[args[1]] != nil {
		return subs[args[1]](g, args[2:])
	}
	fmt.Fprint(g.io.err, authUsage)
	if len(args) > 0 && (args[len(args)-1] == "-h" || args[len(args)-1] == "--help") {
		return flag.ErrHelp
	}
	if len(args) == 0 || args[0] != "token" {
		return subcommandError("auth", strings.Join(args[:min(len(args), 1)], " "), "token")
	}
	return subcommandError("auth token", strings.Join(args[1:min(len(args), 2)], " "), "create, ls, revoke, rotate")
}

// subcommandError tells a missing subcommand from a mistyped one.
func subcommandError(cmd, got, choices string) error {
	if got == "" {
		return usageErrorf("%s: give a subcommand: %s", cmd, choices)
	}
	return usageErrorf("%s: unknown subcommand %q; use %s", cmd, got, choices)
}

const authUsage = `Usage: helyos auth token SUBCOMMAND

  create NAME [--ttl DURATION] [--scope admin|read] [--allow-from CIDR]...
                          mint a token; its secret is shown once
  ls (list)               list active tokens: scope, expiry, bindings
  revoke NAME             revoke a token at once
  rotate NAME [--grace DURATION]
                          give a token a new secret; the old one stops working
                          at once, or after the grace period

DURATION: 90s, 15m, 12h, 30d, or whole seconds.
`

func cmdTokenCreate(g *globals, args []string) error {
	fs := g.newFlags("auth token create", "NAME [--ttl DURATION] [--scope admin|read] [--allow-from CIDR]...",
		"Mint a named API token. Its secret is printed once, on stdout.\n"+
			"A read token may use every GET under /api/v1/ and change nothing. A token with --allow-from is\n"+
			"accepted only from those source addresses. Behind a proxy the daemon sees the proxy's address\n"+
			"(X-Forwarded-For is not trusted), so bind to the proxy or not at all.")
	var ttl time.Duration
	fs.Func("ttl", "lifetime: a `duration` such as 90s, 15m, 12h or 30d, or whole seconds (default: no expiry)", func(s string) (err error) {
		ttl, err = parseDuration(s)
		return err
	})
	scope := fs.String("scope", "", "`scope`: admin (everything; the default) or read (every GET, no changes)")
	var allowFrom []string
	fs.Func("allow-from", "accept the token only from this source `CIDR`, e.g. 10.0.0.0/8 or 192.0.2.7/32 (repeatable)", func(v string) error {
		allowFrom = append(allowFrom, v)
		return nil
	})
	pos, err := parseFlags(fs, args, 1, 1)
	if err != nil {
		return err
	}
	body := map[string]any{"name": pos[0], "ttl_secs": int64(ttl / time.Second), "allow_from": allowFrom}
	if *scope != "" {
		body["scope"] = *scope
	}
	return g.requestNewToken("create", pos[0], "/api/v1/tokens", body)
}

func cmdTokenRotate(g *globals, args []string) error {
	fs := g.newFlags("auth token rotate", "NAME [--grace DURATION]",
		"Give a token a new secret with the same name, scope, bindings and expiry. The new secret is\n"+
			"printed once, on stdout. The old one is refused from the next request, or after --grace.")
	var grace time.Duration
	fs.Func("grace", "keep the old secret working this `duration` longer (90s, 15m, 12h, 1d), for clients that need time to pick up the new one", func(v string) (err error) {
		grace, err = parseDuration(v)
		return err
	})
	pos, err := parseFlags(fs, args, 1, 1)
	if err != nil {
		return err
	}
	path := "/api/v1/tokens/" + url.PathEscape(pos[0]) + "/rotate"
	if err := g.requestNewToken("rotate", pos[0], path, map[string]int64{"grace_secs": int64(grace / time.Second)}); err != nil {
		return err
	}
	when := "now"
	if grace > 0 {
		when = "in " + grace.String()
	}
	fmt.Fprintf(g.io.err, "The old secret stops working %s.\n", when)
	return nil
}

// requestNewToken posts a request whose answer is a new secret (create,
// rotate) and prints that answer.
func (g *globals) requestNewToken(verb, name, path string, body any) error {
	t, err := g.resolve()
	if err != nil {
		return err
	}
	var raw json.RawMessage
	if err := t.call("POST", path, body, &raw); err != nil {
		return fmt.Errorf("%s token %q: %w", verb, name, err)
	}
	return g.printNewToken(raw)
}

// printNewToken shows the daemon's answer to a new secret (create, rotate):
// the secret once, on stdout, and on stderr the line that logs in with it
// from elsewhere, which needs no trust prompt and carries no secret. With
// --json, the daemon's answer as it is.
func (g *globals) printNewToken(raw json.RawMessage) error {
	if g.json {
		return g.printJSON(raw)
	}
	var created newToken
	if err := json.Unmarshal(raw, &created); err != nil {
		return fmt.Errorf("decode the new token: %w", err)
	}
	fmt.Fprintln(g.io.out, sanitize(created.Token))
	fmt.Fprintf(g.io.err, "token %q (scope %s, expires %s, allowed from %s): its secret is printed once, on stdout; save it now.\n",
		created.Name, sanitize(created.Scope), formatTime(created.ExpiresAt, "never"), allowedFrom(created.AllowFrom))
	server, err := normalizeServer(created.Login.Server)
	fp := ""
	if created.Login.CASHA256 != nil && err == nil {
		fp = *created.Login.CASHA256
		_, err = normalizeFingerprint(fp)
	}
	// The line is for pasting into a shell: nothing in it may be more than
	// an address and a fingerprint, whatever the daemon sent.
	if err != nil || !shellSafe.MatchString(server+fp) {
		fmt.Fprintf(g.io.err, "helyos: warning: no login line: the daemon's address %q or CA fingerprint %q is malformed\n", redactTokens(created.Login.Server), redactTokens(fp))
		return nil
	}
	login := "helyos login " + server
	if fp != "" {
		login += " --ca-fingerprint " + fp
	}
	where := "To use it on another machine, run this there and paste the token"
	if isLoopback(hostOf(server)) {
		where = "Only this machine reaches the daemon (loopback); to log in with the token here, run this and paste the token"
	}
	fmt.Fprintf(g.io.err, "%s:\n  %s --token-stdin\n", where, login)
	return nil
}

// shellSafe is all a login line built from a daemon's answer may hold.
var shellSafe = regexp.MustCompile(`^[A-Za-z0-9.:/\[\]_-]+$`)

// parseDuration reads a duration as people write one: Go's (90s, 15m, 12h),
// days (30d), or bare whole seconds (3600). It is never negative and counts
// whole seconds, the unit the daemon works in.
func parseDuration(s string) (time.Duration, error) {
	unit, digits := time.Second, s
	if days, ok := strings.CutSuffix(s, "d"); ok {
		unit, digits = 24*time.Hour, days
	}
	n, err := strconv.ParseInt(digits, 10, 64)
	d := time.Duration(n) * unit
	if err != nil {
		d, err = time.ParseDuration(s)
	} else if d/unit != time.Duration(n) {
		err = errors.New("too long")
	}
	if err != nil || d < 0 || d%time.Second != 0 {
		return 0, errors.New("want a duration such as 90s, 15m, 12h or 30d, or whole seconds")
	}
	return d, nil
}

func allowedFrom(prefixes []netip.Prefix) string {
	if len(prefixes) == 0 {
		return "any address"
	}
	var s []string
	for _, p := range prefixes {
		s = append(s, p.String())
	}
	return strings.Join(s, ", ")
}

func cmdTokenList(g *globals, args []string) error {
	fs := g.newFlags("auth token ls", "", "List the daemon's active API tokens (never their secrets).")
	if _, err := parseFlags(fs, args, 0, 0); err != nil {
		return err
	}
	t, err := g.resolve()
	if err != nil {
		return err
	}
	var raw json.RawMessage
	if err := t.call("GET", "/api/v1/tokens", nil, &raw); err != nil {
		return fmt.Errorf("list tokens: %w", err)
	}
	if g.json {
		return g.printJSON(raw)
	}
	var list []tokenInfo
	if err := json.Unmarshal(raw, &list); err != nil {
		return fmt.Errorf("decode the token list: %w", err)
	}
	tw := g.table()
	fmt.Fprintln(tw, "NAME\tSCOPE\tCREATED\tEXPIRES\tLAST USED\tALLOWED FROM")
	for _, i := range list {
		expires := formatTime(i.ExpiresAt, "never")
		if i.Bootstrap {
			expires += " (bootstrap: exempt from --max-ttl)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", sanitize(i.Name), sanitize(i.Scope), formatTime(&i.CreatedAt, "-"), expires, formatTime(i.LastUsedAt, "never"), allowedFrom(i.AllowFrom))
	}
	return tw.Flush()
}

func cmdTokenRevoke(g *globals, args []string) error {
	fs := g.newFlags("auth token revoke", "NAME", "Revoke an API token; it is refused from the very next request.")
	pos, err := g.parseFlagsNoData(fs, args, 1, 1)
	if err != nil {
		return err
	}
	t, err := g.resolve()
	if err != nil {
		return err
	}
	if err := t.call("DELETE", "/api/v1/tokens/"+url.PathEscape(pos[0]), nil, nil); err != nil {
		return fmt.Errorf("revoke token %q: %w", pos[0], err)
	}
	fmt.Fprintf(g.io.err, "revoked token %q\n", pos[0])
	return nil
}

// ---- audit, events ----

func cmdAudit(g *globals, args []string) error {
	if len(args) == 0 || args[0] != "verify" {
		fmt.Fprint(g.io.err, "Usage: helyos audit verify [FILE...] [--data-dir DIR]\n")
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			return flag.ErrHelp
		}
		return subcommandError("audit", strings.Join(args[:min(len(args), 1)], " "), "verify")
	}
	fs := g.newFlags("audit verify", "[FILE...]", "Walk the audit log's hash chain and report the first record whose seq or prev does not follow.\nReads the files only: no daemon needed. Default: the data dir's audit.log.5 ... audit.log.1, audit.log.")
	dataDir := fs.String("data-dir", defaultDataDir(), "the daemon's data `dir`ectory")
	files, err := parseFlags(fs, args[1:], 0, 1<<16)
	if err != nil {
		return err
	}
	if len(files) == 0 {
		if files = auditFiles(*dataDir); len(files) == 0 {
			return withHint(fmt.Errorf("no audit log in %s", *dataDir), "pass --data-dir DIR, or the files to check, oldest first")
		}
	}
	sum, err := verifyChain(files)
	if err != nil {
		return withHint(fmt.Errorf("audit log chain broken: %w", err), "every record before that line chains intact; compare the rest with a copy kept off this host")
	}
	if g.json {
		return g.printJSON(sum)
	}
	files = sum.Files
	fmt.Fprintf(g.io.out, "intact: %d records, seq %d to %d, in %d file%s\n", sum.Records, sum.FirstSeq, sum.LastSeq, len(files), map[bool]string{true: "s"}[len(files) > 1])
	if sum.FirstSeq > 1 {
		fmt.Fprintf(g.io.out, "the chain starts at seq %d: the records before it were rotated away or are in files not given\n", sum.FirstSeq)
	}
	return nil
}

// eventRow is a line of the `helyos events` table.
const eventRow = "%-24s %6s  %-20s %-12s %-15s %-12s %-8s %s\n"

const (
	eventRetries     = 5                  // reconnections in a row before `events --follow` gives up
	eventIdleTimeout = 3 * eventKeepAlive // silence this long means the connection is dead
)

func cmdEvents(g *globals, args []string) error {
	fs := g.newFlags("events", "[--follow] [--since DURATION|SEQ]", "Show the daemon's audit events: a table, or JSON lines with --json.\nWithout --since: every record still on disk, or with --follow only new ones.")
	follow := fs.Bool("follow", false, "keep streaming; reconnect after a dropped connection")
	since := fs.String("since", "", "start after record `SEQ`, or this long ago (90s, 15m, 12h, 7d)")
	if _, err := parseFlags(fs, args, 0, 0); err != nil {
		return err
	}
	from, err := sinceQuery(*since, *follow)
	if err != nil {
		return err
	}
	t, err := g.resolve()
	if err != nil {
		return err
	}
	header := !g.json
	emit := func(name, data string) {
		if header {
			fmt.Fprintf(g.io.out, eventRow, "TIME", "SEQ", "EVENT", "ACTOR", "REMOTE", "TARGET", "OUTCOME", "DETAIL")
			header = false
		}
		g.printEvent(name, data)
	}
	lastID, failures := "", 0
	for {
		progressed, err := t.readEvents(emit, from, &lastID, *follow)
		var apiErr *apiError
		if progressed {
			failures = 0
		}
		if err == nil || (errors.As(err, &apiErr) && apiErr.status != http.StatusServiceUnavailable) || (lastID == "" && !progressed) {
			return err
		}
		if failures++; failures > eventRetries {
			return fmt.Errorf("gave up after %d reconnections in a row: %w", eventRetries, err)
		}
		wait := time.Duration(1<<failures) * 250 * time.Millisecond
		fmt.Fprintf(g.io.err, "helyos: warning: %s; reconnecting in %s\n", sanitize(redactTokens(err.Error())), wait)
		time.Sleep(wait)
	}
}

// sinceQuery turns --since into the stream's since parameter: a record
// number, or a time so long ago. Without --since, a listing starts at the
// beginning and --follow at the live edge.
func sinceQuery(since string, follow bool) (string, error) {
	if since == "" && !follow {
		return "0", nil
	}
	if _, err := strconv.ParseUint(since, 10, 64); err == nil || since == "" {
		return since, nil
	}
	d, err := parseDuration(since)
	if err != nil {
		return "", usageErrorf("--since %q is neither a record number nor a duration such as 15m, 12h or 7d", redactTokens(since))
	}
	return time.Now().Add(-d).UTC().Format(time.RFC3339), nil
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
	var id, name, data string
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), maxResponseBytes)
	for sc.Scan() {
		idle.Reset(eventIdleTimeout)
		line := sc.Text()
		switch field, value, _ := strings.Cut(line, ": "); {
		case line == "": // the end of an event
			if id != "" {
				*lastID, progressed = id, true
			}
			if data != "" {
				emit(name, data)
			}
			id, name, data = "", "", ""
		case line == ": live" && !follow:
			return true, nil
		case field == "id":
			id = value
		case field == "event":
			name = value
		case field == "data":
			data = value
		}
	}
	return progressed, fmt.Errorf("the event stream from %s ended (%v)", t.server, cmp.Or(sc.Err(), io.EOF))
}

// printEvent prints one event: its JSON as it came with --json, else a
// table row. A warning about missed events goes to stderr in a table, and
// data that is not a JSON object to stderr always.
func (g *globals) printEvent(name, data string) {
	data = sanitize(data)
	var rec auditRecord
	isObject := json.Unmarshal([]byte(data), &rec) == nil
	if g.json && isObject {
		fmt.Fprintln(g.io.out, data)
		return
	}
	if name == "warning" || !isObject {
		fmt.Fprintf(g.io.err, "helyos: warning: %s\n", data)
		return
	}
	detail, _ := json.Marshal(rec.Detail)
	fmt.Fprintf(g.io.out, eventRow, rec.Time.Format(time.RFC3339), strconv.FormatUint(rec.Seq, 10), sanitize(rec.Event),
		orDash(sanitize(deref(rec.Actor))), orDash(sanitize(deref(rec.Remote))), orDash(sanitize(deref(rec.Target))), sanitize(rec.Outcome), sanitize(string(detail)))
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
