package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	tokenStoreFile = "tokens.json"
	maxBodyBytes   = 1 << 20
	shutdownGrace  = 10 * time.Second

	// A client gets this long to send its headers, its whole request, and
	// to read the answer; an idle keep-alive connection is closed after
	// serverIdleTimeout.
	serverReadHeaderTimeout = 10 * time.Second
	serverReadTimeout       = 30 * time.Second
	serverWriteTimeout      = 30 * time.Second
	serverIdleTimeout       = 2 * time.Minute
	// eventKeepAlive is how often an idle event stream gets a comment line,
	// so proxies keep it open and clients notice a dead connection.
	eventKeepAlive = 15 * time.Second

	// fdHeadroom is how many file descriptors the daemon keeps for its own
	// files (the token store, certificates, the data-dir lock) beyond its
	// connections: --max-conns is lowered to fit under the open-file limit.
	fdHeadroom = 64
)

// The plain-HTTP guardrail's messages, word for word from the security model.
const (
	msgPlainHTTP = "refusing to serve a non-loopback address (%s) over plain HTTP; use --tls on, or pass BOTH --tls off and --insecure-http"
	msgNoToken   = "refusing to expose a non-loopback address with no API token configured; set --api-token / HELYOS_API_TOKEN first"
)

// daemonConfig is everything the daemon's flags decide.
type daemonConfig struct {
	host          string
	port          int
	dataDir       string
	tlsMode       string // auto, on, off
	insecureHTTP  bool
	apiToken      string
	advertiseAddr string // the host part of --advertise-addr
	advertisePort string // its port, when it names one
	tlsSANs       []string
	tlsCert       string
	tlsKey        string
	logFormat     string        // text, json
	maxTTL        time.Duration // longest life of a created or rotated token; 0: no limit
	auditMaxSize  int64         // audit.log is rotated before it grows past this
	configPath    string        // where the local CLI context goes; "" when there is no home
	maxConns      int
	maxConnsPerIP int
	logLevel      string // info, debug

	// Set by systemd: where readiness goes, and whether stderr is the journal.
	notifySocket string
	journal      bool
}

func defaultDataDir() string {
	if home, err := os.UserHomeDir(); err == nil && home != "" {
		return filepath.Join(home, ".helyos", "data")
	}
	return "/var/lib/helyos"
}

func parseDaemonFlags(args []string, stderr io.Writer) (*daemonConfig, error) {
	cfg := &daemonConfig{notifySocket: os.Getenv("NOTIFY_SOCKET"), journal: stderrIsJournal(os.Getenv("JOURNAL_STREAM")), auditMaxSize: defaultAuditMaxSize}
	if _, err := parseFlags(daemonFlags(cfg, stderr), args, 0, 0); err != nil {
		return nil, err
	}
	if cfg.apiToken == "" {
		cfg.apiToken = os.Getenv("HELYOS_API_TOKEN") // read here, so --help never shows it
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if p, err := configPath(); err == nil {
		cfg.configPath = p
	}
	return cfg, nil
}

// daemonFlags binds the daemon's flags to cfg; completion lists them too.
func daemonFlags(cfg *daemonConfig, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("daemon", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&cfg.host, "host", "127.0.0.1", "bind `address`")
	fs.IntVar(&cfg.port, "port", 6443, "REST API `port` (0 picks a free one)")
	fs.StringVar(&cfg.dataDir, "data-dir", defaultDataDir(), "`dir`ectory for state, keys and certificates")
	fs.StringVar(&cfg.tlsMode, "tls", "auto", "`mode`: auto (HTTPS unless bound to loopback without --tls-cert), on, off")
	fs.BoolVar(&cfg.insecureHTTP, "insecure-http", false, "acknowledge plain HTTP on a non-loopback address")
	fs.StringVar(&cfg.apiToken, "api-token", "", "API `token` to accept (default $HELYOS_API_TOKEN)")
	fs.StringVar(&cfg.advertiseAddr, "advertise-addr", "", "`host[:port]` clients dial: added to the certificate, the login hint and every new token's login line")
	fs.Func("tls-san", "extra certificate subject alternative `name` (repeatable)", func(v string) error {
		cfg.tlsSANs = append(cfg.tlsSANs, v)
		return nil
	})
	fs.StringVar(&cfg.tlsCert, "tls-cert", "", "serve this certificate `file` (PEM) instead of the self-signed one")
	fs.StringVar(&cfg.tlsKey, "tls-key", "", "private key `file` (PEM) for --tls-cert; SIGHUP re-reads both")
	fs.StringVar(&cfg.logFormat, "log-format", "text", "log `format`: text, or json (one object per line)")
	fs.Func("max-ttl", "created and rotated tokens may live at most this `duration` (90s, 12h, 30d); the bootstrap token is exempt", func(v string) (err error) {
		cfg.maxTTL, err = parseDuration(v)
		return err
	})
	fs.Func("audit-max-size", "rotate audit.log when it would grow past `size` (bytes, or with KiB, MiB, GiB; default 64MiB)", func(v string) error {
		n, err := parseSize(v)
		cfg.auditMaxSize = n
		return err
	})
	fs.StringVar(&cfg.logLevel, "log-level", "info", "`level`: info, or debug (adds why each bearer token was refused)")
	fs.IntVar(&cfg.maxConns, "max-conns", 4096, "most open client connections, in total")
	fs.IntVar(&cfg.maxConnsPerIP, "max-conns-per-ip", 256, "most open client connections from one source address")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: helyos daemon [flags]\n\nRuns the helyos REST API server.\n")
		printFlags(stderr, fs)
	}
	return fs
}

func (c *daemonConfig) validate() error {
	switch c.tlsMode {
	case "auto", "on", "off":
	default:
		return usageErrorf("--tls must be auto, on or off, not %q", c.tlsMode)
	}
	if c.logFormat != "text" && c.logFormat != "json" {
		return usageErrorf("--log-format must be text or json, not %q", c.logFormat)
	}
	if c.port < 0 || c.port > 65535 {
		return usageErrorf("--port must be between 0 and 65535, not %d", c.port)
	}
	for name, n := range map[string]int{"--max-conns": c.maxConns, "--max-conns-per-ip": c.maxConnsPerIP} {
		if n < 1 {
			return usageErrorf("%s must be at least 1, not %d", name, n)
		}
	}
	if c.logLevel != "info" && c.logLevel != "debug" {
		return usageErrorf("--log-level must be info or debug, not %q", c.logLevel)
	}
	if (c.tlsCert == "") != (c.tlsKey == "") {
		return usageErrorf("--tls-cert and --tls-key go together: give both or neither")
	}
	if c.tlsCert != "" && c.tlsMode == "off" {
		return usageErrorf("--tls-cert and --tls-key need TLS, but --tls is off")
	}
	if c.advertiseAddr != "" {
		host, port, err := splitAdvertiseAddr(c.advertiseAddr)
		if err != nil {
			return withHint(usageErrorf("--advertise-addr %q: %v", redactTokens(c.advertiseAddr), err),
				"give the name or address clients dial, for example --advertise-addr cluster.example.com or 203.0.113.7:7443")
		}
		c.advertiseAddr, c.advertisePort = host, port
	}
	for _, san := range c.tlsSANs { // a certificate is public: no token, nothing but a name
		if name := strings.TrimPrefix(strings.Trim(san, "[]"), "*."); net.ParseIP(name) == nil && (len(name) > 253 || !hostNamePattern.MatchString(name)) {
			return withHint(usageErrorf("--tls-san %q is not a host name or IP address", redactTokens(san)),
				"give another name clients dial, for example --tls-san helyos.internal or --tls-san 10.0.0.5")
		}
	}
	if c.apiToken != "" {
		if _, ok := parseAPIToken(c.apiToken); !ok {
			return withHint(usageErrorf("the API token from --api-token / HELYOS_API_TOKEN is not nxa-api_ followed by 64 lower-case hex characters"),
				"make one with: echo nxa-api_$(openssl rand -hex 32)")
		}
	}
	return nil
}

// parseSize reads a byte count of at least 1 KiB, bare or with a KiB, MiB
// or GiB suffix.
func parseSize(v string) (int64, error) {
	for _, u := range []struct {
		suffix string
		unit   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"", 1}} {
		if num, ok := strings.CutSuffix(v, u.suffix); ok {
			n, err := strconv.ParseInt(num, 10, 64)
			if err != nil || n < 1 || n > (1<<50)/u.unit || n*u.unit < 1<<10 {
				break
			}
			return n * u.unit, nil
		}
	}
	return 0, fmt.Errorf("%q is not a size of at least 1KiB, such as 1048576, 512KiB or 64MiB", v)
}

// useTLS applies --tls: auto means HTTPS unless the bind host is loopback
// and no --tls-cert was given (an operator who brings a certificate wants
// it served).
func (c *daemonConfig) useTLS() bool {
	return c.tlsMode == "on" || (c.tlsMode == "auto" && (c.tlsCert != "" || !isLoopback(c.host)))
}

// checkExposure is the plain-HTTP guardrail. Serving a reachable address in
// the clear needs --tls off, --insecure-http and a configured token, all
// three; loopback binds are never refused.
func checkExposure(host string, useTLS, insecureHTTP, tokenConfigured bool) error {
	if useTLS || isLoopback(host) {
		return nil
	}
	if !insecureHTTP {
		return fmt.Errorf(msgPlainHTTP, host)
	}
	if !tokenConfigured {
		return errors.New(msgNoToken)
	}
	return nil
}

// lockDataDir refuses a data dir owned by another user (whoever owns it can
// plant tokens and keys in it), then takes an exclusive flock on it, so a
// second daemon pointed at the same dir refuses to start instead of keeping
// its own copy of the token store (a revoke made through one daemon would not
// reach the other). Locking the folder creates no file. A folder that does
// not exist yet holds nothing to protect: then unlock is nil, and the caller
// locks again once it has created the folder.
func lockDataDir(dir string) (unlock func(), err error) {
	f, err := os.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open data dir: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("stat data dir: %w", err)
	}
	if uid := fi.Sys().(*syscall.Stat_t).Uid; int(uid) != os.Getuid() {
		f.Close()
		return nil, withHint(fmt.Errorf("data dir %s is owned by uid %d, not by this user (uid %d)", dir, uid, os.Getuid()),
			"run the daemon as the dir's owner, or give it a --data-dir of its own")
	}
	if mode := fi.Mode().Perm(); mode&0o022 != 0 {
		f.Close()
		return nil, withHint(fmt.Errorf("data dir %s is writable by group or others (mode %o): whoever could write it may have planted tokens or keys in it", dir, mode),
			"check what is in it, then chmod 700 it; or give the daemon a new --data-dir")
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, withHint(fmt.Errorf("data dir %s is in use by another helyos daemon", dir),
				"stop that daemon, or give this one its own --data-dir")
		}
		return nil, fmt.Errorf("lock data dir %s: %w", dir, err)
	}
	return func() { f.Close() }, nil // closing releases the flock
}

// runDaemon is `helyos daemon`. It returns when the daemon stops.
func runDaemon(args []string, stderr io.Writer) error {
	cfg, err := parseDaemonFlags(args, stderr)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	reload := make(chan os.Signal, 1)
	signal.Notify(reload, syscall.SIGHUP)
	defer signal.Stop(reload)
	logger := newLogger(cfg.logFormat, cfg.journal, stderr)
	err = cfg.run(ctx, reload, logger, stderr)
	if err != nil && cfg.logFormat == "json" { // the reason, too, in the log's own format
		logger.Printf("error: %s", redactTokens(err.Error()))
		var h *hintError
		if errors.As(err, &h) {
			logger.Printf("hint: %s", redactTokens(h.hint))
		}
		return errLogged
	}
	return err
}

// underSystemd: systemd sets $NOTIFY_SOCKET for Type=notify, and
// $JOURNAL_STREAM to stderr's stream when stderr is the journal.
func (c *daemonConfig) underSystemd() bool {
	return c.notifySocket != "" || c.journal
}

// keepTokenOutOfLog is true when the log is kept where others read it: the
// journal, or a log shipper fed JSON. The first-run token then goes to a
// file instead.
func (c *daemonConfig) keepTokenOutOfLog() bool {
	return c.underSystemd() || c.logFormat == "json"
}

// run starts the daemon. Nothing is written to the data dir or the config
// file until the guardrails have passed and the port is bound.
func (c *daemonConfig) run(ctx context.Context, reload <-chan os.Signal, logger *log.Logger, stderr io.Writer) error {
	now := time.Now
	unlock, err := lockDataDir(c.dataDir)
	if err != nil {
		return err
	}
	defer func() {
		if unlock != nil {
			unlock()
		}
	}()
	records, err := readTokenFile(filepath.Join(c.dataDir, tokenStoreFile))
	if err != nil {
		return err
	}
	store := newTokenStore(filepath.Join(c.dataDir, tokenStoreFile), records, now)
	store.maxTTL = c.maxTTL
	var given *tokenRecord
	if c.apiToken != "" {
		if given, err = store.findToken(ctx, c.apiToken); err != nil {
			return fmt.Errorf("check --api-token against the token store: %w", err)
		}
	}
	givenUsable := c.apiToken != "" && (given == nil || given.active(now()))
	if err := checkExposure(c.host, c.useTLS(), c.insecureHTTP, givenUsable || store.activeCount() > 0); err != nil {
		return err
	}

	ln, err := net.Listen("tcp", net.JoinHostPort(strings.Trim(c.host, "[]"), strconv.Itoa(c.port)))
	if err != nil {
		return fmt.Errorf("listen on %s port %d: %w", c.host, c.port, err)
	}
	defer ln.Close()
	if err := os.MkdirAll(c.dataDir, 0o700); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}
	if err := os.Chmod(c.dataDir, 0o700); err != nil {
		return fmt.Errorf("restrict data dir to its owner: %w", err)
	}
	if unlock == nil { // the data dir did not exist; lock it now that it does
		if unlock, err = lockDataDir(c.dataDir); err != nil {
			return err
		}
	}
	removeStaleTemps(c.dataDir, tokenStoreFile, caCertFile, caKeyFile, serverCertFile, serverKeyFile)
	audit, err := openAuditLog(c.dataDir, c.auditMaxSize, now, logger)
	if err != nil {
		return err
	}
	defer audit.close()

	srv := &server{tokens: store, metrics: newMetrics(), logger: logger, notifySocket: c.notifySocket, audit: audit, keepAlive: eventKeepAlive, debug: c.logLevel == "debug",
		maxConns: c.maxConns, maxConnsPerIP: c.maxConnsPerIP}
	if limit := raiseFileLimit(); limit > 0 && limit < uint64(c.maxConns)+fdHeadroom {
		srv.maxConns = max(1, int(limit)-fdHeadroom)
		logger.Printf("warning: the open-file limit is %d, so --max-conns is lowered to %d; raise the limit (ulimit -n, LimitNOFILE=) to allow more", limit, srv.maxConns)
	}
	var tlsConfig *tls.Config
	if c.useTLS() {
		if tlsConfig, srv.ca, srv.certs, err = c.loadTLS(now, audit); err != nil {
			return err
		}
	}
	plaintext, err := c.bootstrapToken(ctx, store, given, audit, logger)
	if err != nil {
		return err
	}

	port := ln.Addr().(*net.TCPAddr).Port
	scheme := map[bool]string{true: "https", false: "http"}[tlsConfig != nil]
	srv.login = c.loginInfo(scheme, port, srv.ca)
	if !isLoopback(c.host) && tlsConfig == nil {
		logger.Printf("warning: serving %s over plain HTTP: bearer tokens cross the network in the clear", c.host)
	}
	if c.advertiseAddr != "" && isLoopback(c.host) {
		logger.Printf("warning: --advertise-addr has no effect on who can connect: the daemon listens on loopback (%s) only; bind a reachable address with --host", c.host)
	}
	switch generated := plaintext != "" && c.apiToken == ""; {
	case generated && c.keepTokenOutOfLog():
		logger.Printf("the first API token is in %s (mode 0600), not in this log", filepath.Join(c.dataDir, bootstrapTokenFile))
	case generated:
		fmt.Fprintf(stderr, "Generated new API token — save this, it will not be shown again:\nHELYOS_API_TOKEN=%s\n", plaintext)
	}
	if fp := srv.login.CASHA256; fp != nil {
		logger.Printf("CA fingerprint (SHA-256): %s", *fp)
		where := "from another machine "
		if isLoopback(c.host) {
			where = "" // only this machine can reach a loopback address
		}
		logger.Printf("log in %swith: helyos login %s --ca-fingerprint %s", where, srv.login.Server, *fp)
	}
	if !c.underSystemd() { // a service's user is not the operator
		c.writeLocalContext(ctx, store, plaintext, scheme, port, srv.ca, logger)
	}
	if n := store.activeCount(); n == 0 {
		logger.Printf("warning: no active API token; restart with --api-token to add one")
	}
	if err := c.recordStart(audit, port, tlsConfig != nil); err != nil {
		return err
	}
	// The last line of start-up: scripts and tests wait for it.
	logger.Printf("listening on %s://%s", scheme, net.JoinHostPort(strings.Trim(c.host, "[]"), strconv.Itoa(port)))
	return srv.serve(ctx, ln.(*net.TCPListener), tlsConfig, reload)
}

// raiseFileLimit lifts the soft RLIMIT_NOFILE to the hard limit (the Go
// runtime stops one short of it) and returns the limit now in force.
func raiseFileLimit() uint64 {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	lim.Cur = lim.Max
	syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim) // on failure, the limit read below stands
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	return lim.Cur
}

// recordStart writes daemon.started; a daemon that cannot record it does
// not serve.
func (c *daemonConfig) recordStart(audit *auditLog, port int, useTLS bool) error {
	mode := "off"
	switch {
	case useTLS && c.tlsCert != "":
		mode = "own certificate"
	case useTLS:
		mode = "self-signed"
	}
	return audit.record("daemon.started", "", "", "", outcomeSuccess, map[string]any{"version": buildVersion(), "tls": mode,
		"bind": net.JoinHostPort(strings.Trim(c.host, "[]"), strconv.Itoa(port)), "advertise": orNull(c.advertiseAddr), "unclean_stop": audit.unclean})
}

// loadTLS returns the serving TLS configuration and either the daemon's own
// CA or the operator's certificate files.
func (c *daemonConfig) loadTLS(now func() time.Time, audit *auditLog) (*tls.Config, *certAuthority, *certFiles, error) {
	if c.tlsCert != "" {
		files := &certFiles{certPath: c.tlsCert, keyPath: c.tlsKey, now: now}
		if err := files.load(); err != nil {
			return nil, nil, nil, err
		}
		return serverTLSConfig(files.get), nil, files, nil
	}
	ca, err := loadOrCreateCA(c.dataDir, now())
	if err != nil {
		return nil, nil, nil, err
	}
	cert, err := newServingCert(ca, c.dataDir, certSANs(c.host, c.advertiseAddr, c.tlsSANs), now, audit)
	if err != nil {
		return nil, nil, nil, err
	}
	return serverTLSConfig(cert.get), ca, nil, nil
}

// bootstrapToken makes sure the daemon has a token someone holds, and returns
// it in plaintext when this start knows it: generated now (an empty store),
// or given by --api-token. A given token that was revoked or has expired
// stays refused; a new given token replaces the earlier bootstrap token.
//
// These changes are made by the operator through flags, not by a caller:
// their records have no actor and no remote.
func (c *daemonConfig) bootstrapToken(ctx context.Context, store *tokenStore, given *tokenRecord, audit *auditLog, logger *log.Logger) (string, error) {
	switch {
	case c.apiToken != "" && given != nil && !given.active(store.now()):
		logger.Printf("warning: the token from --api-token / HELYOS_API_TOKEN (%q) was revoked or has expired; it stays refused", given.Name)
		return "", nil
	case c.apiToken != "" && given != nil:
		return c.apiToken, nil
	case c.apiToken != "":
		old := store.activeNamed(bootstrapName)
		event := map[bool]string{true: "token.rotated", false: "token.created"}[old != nil]
		if _, err := store.add(ctx, c.apiToken, &tokenRecord{Name: bootstrapName, Scope: scopeAdmin, Bootstrap: true}, 0, old, 0, audit.change(event, "", "")); err != nil {
			return "", fmt.Errorf("store --api-token: %w", err)
		}
		if old != nil {
			logger.Printf("a new --api-token replaces the earlier %q token, which is now revoked", bootstrapName)
		}
		return c.apiToken, nil
	case len(store.records) == 0:
		return c.firstToken(ctx, store, audit)
	}
	return "", nil
}

// firstToken mints the token of a first start. When it must stay out of
// the log, its file is written before the store, so the store never holds a
// token that nobody was given.
func (c *daemonConfig) firstToken(ctx context.Context, store *tokenStore, audit *auditLog) (string, error) {
	token, path := newAPIToken(), filepath.Join(c.dataDir, bootstrapTokenFile)
	if c.keepTokenOutOfLog() {
		if err := writeBootstrapToken(path, token); err != nil {
			return "", err
		}
	}
	if _, err := store.add(ctx, token, &tokenRecord{Name: bootstrapName, Scope: scopeAdmin, Bootstrap: true}, 0, nil, 0, audit.change("token.created", "", "")); err != nil {
		if c.keepTokenOutOfLog() {
			os.Remove(path)
		}
		return "", fmt.Errorf("store the first API token: %w", err)
	}
	return token, nil
}

// loginInfo is where clients on other machines reach this daemon, as its
// start-up hint and every new token's answer tell them: https://ADDR:PORT
// with ADDR the --advertise-addr, else the bind host when it is not a
// wildcard, else the hostname; and the CA to pin (nil without a self-signed CA).
func (c *daemonConfig) loginInfo(scheme string, port int, ca *certAuthority) loginInfo {
	host := strings.Trim(c.host, "[]")
	switch {
	case c.advertiseAddr != "":
		host = c.advertiseAddr
	case isWildcard(c.host):
		host = "localhost"
		if h, err := os.Hostname(); err == nil {
			host = h
		}
	}
	if c.advertisePort != "" {
		port, _ = strconv.Atoi(c.advertisePort)
	}
	info := loginInfo{Server: scheme + "://" + net.JoinHostPort(host, strconv.Itoa(port))}
	if ca != nil {
		fp := fingerprint(ca.cert.Raw)
		info.CASHA256 = &fp
	}
	return info
}

// hostNamePattern is a name a certificate can carry: dot-separated labels of
// letters, digits and inner hyphens.
var hostNamePattern = regexp.MustCompile(`^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)

// splitAdvertiseAddr accepts what clients dial, a host or host:port (an IPv6
// address in brackets when a port follows), and nothing else: no scheme, no
// path, no user.
func splitAdvertiseAddr(s string) (host, port string, err error) {
	host, portOK := strings.TrimSuffix(strings.TrimPrefix(s, "["), "]"), true
	if h, p, splitErr := net.SplitHostPort(s); splitErr == nil {
		n, err := strconv.Atoi(p)
		host, port, portOK = h, p, err == nil && n >= 1 && n <= 65535
	}
	if !portOK || (net.ParseIP(host) == nil && (len(host) > 253 || !hostNamePattern.MatchString(host))) {
		return "", "", errors.New("want a host name or IP address, optionally with :PORT, and no scheme or path")
	}
	return host, port, nil
}

// writeLocalContext keeps a context named "local" for this daemon in the
// CLI's config on this machine. A start that knows a token adds one to a
// config without "local". A "local" that holds one of this daemon's active
// tokens is this daemon's own: when the daemon now listens elsewhere (another
// port, TLS on or off), its server and pin follow. Any other "local" is never
// changed; one line then says how to reach this daemon.
func (c *daemonConfig) writeLocalContext(ctx context.Context, store *tokenStore, token, scheme string, port int, ca *certAuthority, logger *log.Logger) {
	if c.configPath == "" {
		return
	}
	if cfg, err := loadConfig(c.configPath); token == "" && (err != nil || cfg.Context("local") == nil) {
		return // a restart adds no context, and writes no file
	}
	host := "localhost"
	if !isLoopback(c.host) && !isWildcard(c.host) {
		host = strings.Trim(c.host, "[]")
	}
	server := scheme + "://" + net.JoinHostPort(host, strconv.Itoa(port))
	var local *Context
	var was, current string
	errKept := errors.New("local is kept")
	err := updateConfig(c.configPath, func(cfg *Config) error {
		switch local = cfg.Context("local"); {
		case local != nil:
			rec, err := store.findToken(ctx, local.Token)
			if sameServer(local.Server, server) || err != nil || rec == nil || !rec.active(store.now()) {
				return errKept
			}
			was = local.Server
		case token == "":
			return errKept
		default:
			local = addLocalContext(cfg, token)
		}
		local.Server, local.CA, local.CASHA256 = server, "", ""
		if ca != nil {
			local.CA, local.CASHA256 = encodeCA(ca.pem), fingerprint(ca.cert.Raw)
		}
		current = cfg.CurrentContext
		return nil
	})
	switch {
	case err == nil && was != "":
		logger.Printf("CLI context %q in %s holds this daemon's token; it now points here, at %s (was %s)", local.Name, c.configPath, server, was)
	case err == nil && current == local.Name:
		logger.Printf("wrote CLI context %q to %s", local.Name, c.configPath)
	case err == nil:
		logger.Printf("added CLI context %q to %s; the current context stays %q: reach this daemon with 'helyos --context local COMMAND'", local.Name, c.configPath, current)
	case !errors.Is(err, errKept):
		logger.Printf("warning: could not write the local CLI context: %v", err)
	case local != nil && !sameServer(local.Server, server):
		login := "helyos login " + server
		if ca != nil {
			login += " --ca-fingerprint " + fingerprint(ca.cert.Raw)
		}
		logger.Printf("CLI context %q in %s is for %s, not this daemon, and is left as it is; reach this daemon by logging in with its token: %s --name local-%d",
			local.Name, c.configPath, local.Server, login, port)
	}
}

// addLocalContext adds the "local" context with token; a config's only
// context, used until now, stays the one the CLI uses.
func addLocalContext(cfg *Config, token string) *Context {
	if cfg.CurrentContext == "" && len(cfg.Contexts) == 1 {
		cfg.CurrentContext = cfg.Contexts[0].Name
	}
	local := &Context{Name: "local", Token: token, TokenName: bootstrapName, Project: "default"}
	cfg.Contexts = append(cfg.Contexts, local)
	if cfg.CurrentContext == "" {
		cfg.CurrentContext = local.Name
	}
	return local
}

// server is the REST API: built once from the flags, no globals.
type server struct {
	tokens    *tokenStore
	ca        *certAuthority // nil when TLS is off or the certificate is the operator's
	login     loginInfo
	metrics   *metrics
	logger    *log.Logger
	audit     *auditLog
	keepAlive time.Duration // between comment lines on an idle event stream

	certs         *certFiles // the operator's --tls-cert/--tls-key, re-read on SIGHUP; else nil
	notifySocket  string     // systemd's $NOTIFY_SOCKET, or ""
	debug         bool       // --log-level debug
	maxConns      int
	maxConnsPerIP int
	timeouts      timeouts
}

// timeouts overrides the server* timeout constants where non-zero; only
// tests set it, to watch each limit fire in milliseconds.
type timeouts struct{ readHeader, read, write, idle time.Duration }

// loginInfo tells a client how to log in to this daemon from elsewhere.
type loginInfo struct {
	Server   string  `json:"server"`
	CASHA256 *string `json:"ca_sha256"` // null without a self-signed CA
}

// newToken is the 201 answer to a token create: the record, its secret
// (this once only) and how to log in with it.
type newToken struct {
	tokenInfo
	Token string    `json:"token"`
	Login loginInfo `json:"login"`
}

// httpServer is the daemon's http.Server, with every limit of SECURITY.md;
// errorLog gets the lines any client can cause.
func (s *server) httpServer(errorLog *log.Logger) *http.Server {
	return &http.Server{
		Handler:           s.routes(),
		ReadHeaderTimeout: cmp.Or(s.timeouts.readHeader, serverReadHeaderTimeout),
		ReadTimeout:       cmp.Or(s.timeouts.read, serverReadTimeout),
		WriteTimeout:      cmp.Or(s.timeouts.write, serverWriteTimeout),
		IdleTimeout:       cmp.Or(s.timeouts.idle, serverIdleTimeout),
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          errorLog,
	}
}

// serve answers on ln until ctx ends. Lines that any client can cause
// (failed TLS handshakes, refused connections, accept errors when file
// descriptors run out) are logged at most once a second, with a count.
func (s *server) serve(ctx context.Context, ln *net.TCPListener, tlsConfig *tls.Config, reload <-chan os.Signal) error {
	clientErrors := log.New(&rateLimitedLog{logger: s.logger}, "", 0)
	hs := s.httpServer(clientErrors)
	var l net.Listener = &connLimiter{TCPListener: ln, max: s.maxConns, perIP: s.maxConnsPerIP,
		keepAlives: hs.SetKeepAlivesEnabled, refused: s.audit.connectionsLimited, logger: clientErrors, bySource: map[string][]*limitedConn{}}
	if tlsConfig != nil {
		l = tls.NewListener(l, tlsConfig)
	}
	hs.RegisterOnShutdown(s.audit.closeSubscribers) // event streams never go idle by themselves
	done, auditDone := make(chan struct{}), make(chan struct{})
	go s.flushLoop(ctx, done)
	go s.audit.run(auditDone)
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(l) }()
	s.notify("READY=1")
	var err error
	for stopping := false; !stopping; {
		select {
		case err = <-errc:
			err, stopping = fmt.Errorf("serve: %w", err), true
		case <-reload:
			s.reload()
		case <-ctx.Done():
			stopping = true
		}
	}
	if err == nil {
		s.notify("STOPPING=1")
		s.logger.Printf("shutting down")
		sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
		defer cancel()
		err = hs.Shutdown(sctx)
		<-done
	}
	if ferr := s.tokens.flushLastUsed(); ferr != nil {
		err = errors.Join(err, ferr)
	}
	close(auditDone)
	s.audit.stop(err)
	return err
}

// reload is SIGHUP: the operator's certificate files are read again and the
// new pair serves new connections; open connections keep the pair they
// started with. A pair that does not load leaves the old one in service.
func (s *server) reload() {
	s.notify("RELOADING=1")
	defer s.notify("READY=1")
	if s.certs == nil {
		s.logger.Printf("SIGHUP: nothing to reload: no --tls-cert (a self-signed certificate renews itself)")
		return
	}
	if err := s.certs.load(); err != nil {
		s.logger.Printf("error: SIGHUP: keeping the certificate in service: %v", err)
		s.audit.record("cert.reissued", "", "", s.certs.certPath, outcomeFailure, map[string]any{"reason": "SIGHUP", "error": err.Error()})
		return
	}
	leaf := s.certs.pair.Load().Leaf
	s.logger.Printf("SIGHUP: now serving %s (%q, expires %s)", s.certs.certPath, leaf.Subject.CommonName, leaf.NotAfter.UTC().Format(time.RFC3339))
	s.audit.record("cert.reissued", "", "", s.certs.certPath, outcomeSuccess,
		map[string]any{"reason": "SIGHUP", "subject": leaf.Subject.CommonName, "serial": leaf.SerialNumber.Text(16), "not_after": leaf.NotAfter})
}

// notify tells systemd, when it is listening, what the daemon is doing.
func (s *server) notify(state string) {
	if err := sdNotify(s.notifySocket, state); err != nil {
		s.logger.Printf("warning: %v", err)
	}
}

// flushLoop writes last-used times now and then, off the request path.
func (s *server) flushLoop(ctx context.Context, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(lastUsedFlushInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := s.tokens.flushLastUsed(); err != nil {
				s.logger.Printf("warning: %v", err)
			}
		}
	}
}

// connLimiter caps open connections in total and per source address (an
// IPv6 source by its /64, which any IPv6 host has to itself): a connection
// over the per-address cap is closed as soon as it is accepted, before TLS
// or HTTP spend anything on it. At the total cap a newcomer takes the place
// of the oldest connection of the address that holds the most, if that
// address holds more than the newcomer's would; else the newcomer is
// closed. So clients spread over many addresses cannot keep out one that
// holds few connections. From 90% of the total cap on, keep-alives are off
// and idle connections are closed (net/http counts a connection that has
// sent no request for 5 s as idle too), so clients that sit on idle
// connections cannot keep new ones out; below 90% keep-alives come back.
// Only http.Server's accept loop calls Accept, so crowded needs no lock.
type connLimiter struct {
	*net.TCPListener
	max, perIP int
	keepAlives func(on bool)              // http.Server.SetKeepAlivesEnabled
	refused    func(remote, limit string) // the audit log's connections.limited tally
	logger     *log.Logger
	crowded    bool

	mu       sync.Mutex
	open     int
	bySource map[string][]*limitedConn // oldest first
}

func (l *connLimiter) Accept() (net.Conn, error) {
	for {
		c, err := l.AcceptTCP()
		if err != nil {
			return nil, err
		}
		lc := &limitedConn{TCPConn: c, l: l, source: connSource(c.RemoteAddr())}
		l.mu.Lock()
		over, evict := "", (*limitedConn)(nil)
		switch own := len(l.bySource[lc.source]); {
		case own >= l.perIP:
			over = "per-address"
		case l.open >= l.max:
			if evict = l.oldestOfBusiest(own + 1); evict == nil {
				over = "total"
			}
		}
		if over == "" {
			l.open++
			l.bySource[lc.source] = append(l.bySource[lc.source], lc)
		}
		crowded := l.open*10 >= l.max*9
		l.mu.Unlock()
		if crowded != l.crowded {
			l.crowded = crowded
			l.keepAlives(!crowded)
		}
		if evict != nil {
			evict.Close()
			l.refused(evict.source, "evicted")
			l.logger.Printf("closed the oldest connection from %s, the busiest source, to make room for one from %s (--max-conns %d)", evict.source, lc.source, l.max)
		}
		if over == "" {
			return lc, nil
		}
		c.Close()
		l.refused(lc.source, over)
		l.logger.Printf("refused a connection from %s: the %s cap is reached (--max-conns %d, --max-conns-per-ip %d)", lc.source, over, l.max, l.perIP)
	}
}

// oldestOfBusiest is the oldest connection of the source holding the most,
// if it holds more than n connections; else nil. The caller holds l.mu.
func (l *connLimiter) oldestOfBusiest(n int) *limitedConn {
	var busiest []*limitedConn
	for _, conns := range l.bySource {
		if len(conns) > len(busiest) {
			busiest = conns
		}
	}
	if len(busiest) <= n {
		return nil
	}
	return busiest[0]
}

// connSource is the address a connection counts against: an IPv4 address,
// or an IPv6 address's /64.
func connSource(addr net.Addr) string {
	ip := addr.(*net.TCPAddr).IP
	if ip.To4() != nil {
		return ip.String()
	}
	return (&net.IPNet{IP: ip.Mask(net.CIDRMask(64, 128)), Mask: net.CIDRMask(64, 128)}).String()
}

func (l *connLimiter) release(c *limitedConn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	conns := slices.DeleteFunc(l.bySource[c.source], func(x *limitedConn) bool { return x == c })
	if len(conns) == 0 {
		delete(l.bySource, c.source)
	} else {
		l.bySource[c.source] = conns
	}
}

// limitedConn gives its place back once, however often it is closed
// (net/http may close a connection both when idle and when it ends, and a
// newcomer may close it first).
type limitedConn struct {
	*net.TCPConn
	l      *connLimiter
	source string
	once   sync.Once
}

func (c *limitedConn) Close() error {
	c.once.Do(func() { c.l.release(c) })
	return c.TCPConn.Close()
}

// rateLimitedLog passes at most one line a second to logger and counts the
// lines it drops in between; the count rides on the next line it passes.
type rateLimitedLog struct {
	logger  *log.Logger
	mu      sync.Mutex
	last    time.Time
	dropped int
}

func (r *rateLimitedLog) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := time.Now(); now.Sub(r.last) >= time.Second {
		msg := strings.TrimSuffix(string(p), "\n")
		if r.dropped > 0 {
			msg += fmt.Sprintf(" (and %d more such lines since the last one)", r.dropped)
		}
		r.logger.Print(msg)
		r.last, r.dropped = now, 0
	} else {
		r.dropped++
	}
	return len(p), nil
}

// routes serves the route table and nothing else.
func (s *server) routes() http.Handler {
	mux := http.NewServeMux()
	for _, r := range s.routeTable() {
		mux.Handle(r.pattern, s.requireScope(r.scope, r.handler))
	}
	return s.observe(mux)
}

// route is a pattern, the scope a token needs for it ("": none, public),
// and its handler.
type route struct {
	pattern string
	scope   string
	handler authedHandler
}

// routeTable is every route the daemon serves with the scope it needs:
// compare it with SPEC §5 line by line. read is every GET under /api/v1/
// and nothing that changes state; admin is everything.
func (s *server) routeTable() []route {
	return []route{
		{"GET /health", "", s.handleHealth},
		{"GET /metrics", "", s.handleMetrics},
		{"GET /api/v1/version", "", s.handleVersion},
		{"GET /api/v1/ca", "", s.handleCA},
		{"GET /api/v1/whoami", scopeRead, s.handleWhoami},
		{"GET /api/v1/tokens", scopeRead, s.handleListTokens},
		{"POST /api/v1/tokens", scopeAdmin, s.handleCreateToken},
		{"POST /api/v1/tokens/{name}/rotate", scopeAdmin, s.handleRotateToken},
		{"DELETE /api/v1/tokens/{name}", scopeAdmin, s.handleRevokeToken},
		{"GET /api/v1/events", scopeRead, s.handleEvents},
		// Unknown API paths need a token before they say "not found", so an
		// anonymous caller learns nothing about which routes exist.
		{"/api/v1/", scopeRead, handleNotFound},
		{"/api/v1", scopeRead, handleNotFound},
		{"/", "", handleNotFound},
	}
}

// observe counts and times every request by its route pattern, sets the
// headers every answer carries, and turns a panic into a 500.
func (s *server) observe(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		h := rec.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Cache-Control", "no-store")
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				s.logger.Printf("error: handler for %s panicked", r.Pattern)
				if !rec.wrote {
					writeError(rec, http.StatusInternalServerError, "internal error")
				}
			}
			s.metrics.observe(r.Method, r.Pattern, rec.code, time.Since(start))
		}()
		next.ServeHTTP(rec, r)
	})
}

type statusRecorder struct {
	http.ResponseWriter
	code  int
	wrote bool
}

func (r *statusRecorder) WriteHeader(code int) {
	if !r.wrote {
		r.code, r.wrote = code, true
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	r.wrote = true
	return r.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the real writer.
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// authedHandler is a handler that runs only for a verified token.
type authedHandler func(http.ResponseWriter, *http.Request, *tokenRecord)

// requireScope admits a request only with a valid bearer token, used from
// an address it is bound to, whose scope grants need; it checks all three on
// every request, remembered token or not. Every 401 looks the same to the
// caller, a token bound elsewhere included; it is counted in the metrics,
// its reason only in the audit log's tally (no I/O here) and, at
// --log-level debug, in the daemon log; an expired token's first refused
// use is recorded. A refused scope is tallied as scope.denied. A token whose
// lookup key already has a full queue of Argon2 checks gets a fast 429
// instead. When the secret stops working goes back in Helyos-Token-Expires
// (with its name in Helyos-Token-Name), so the CLI can warn before it does.
func (s *server) requireScope(need string, next authedHandler) http.Handler {
	if need == "" { // a public route: the token, if any, is not even looked at
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { next(w, r, nil) })
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, err := bearerToken(r.Header)
		var rec *tokenRecord
		if err == nil {
			rec, err = s.tokens.verify(r.Context(), token, r.RemoteAddr)
		}
		if errors.Is(err, errArgonBusy) {
			w.Header().Set("Retry-After", "1")
			writeError(w, http.StatusTooManyRequests, "too many requests are waiting to check a token; retry in a second")
			return
		}
		if err != nil {
			s.metrics.authFailure()
			s.audit.authFailed(remoteIP(r), failureReason(err))
			if s.debug {
				s.logger.Printf("debug: refused the bearer token of a request from %s: %v", r.RemoteAddr, err)
			}
			if errors.Is(err, errTokenExpired) && rec.expiryRecorded.CompareAndSwap(false, true) {
				s.audit.later("token.expired", "", remoteIP(r), rec.Name)
			}
			w.Header().Set("WWW-Authenticate", "Bearer")
			writeError(w, http.StatusUnauthorized, "missing or invalid bearer token")
			return
		}
		if end := rec.endsAt(); end != nil {
			w.Header().Set("Helyos-Token-Name", rec.Name)
			w.Header().Set("Helyos-Token-Expires", end.Format(time.RFC3339))
		}
		if !rec.grants(need) {
			s.audit.scopeDenied(rec.Name, remoteIP(r), r.Pattern)
			writeError(w, http.StatusForbidden, fmt.Sprintf("token %q has scope %s; this needs %s", rec.Name, rec.Scope, need))
			return
		}
		next(w, r, rec)
	})
}

// remoteIP is the address a request came from, without its port.
func remoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// bearerToken reads "Authorization: Bearer TOKEN", the scheme in any case.
func bearerToken(h http.Header) (string, error) {
	values := h.Values("Authorization")
	switch {
	case len(values) == 0:
		return "", errTokenMissing
	case len(values) > 1:
		return "", errTokenMalformed
	}
	scheme, token, ok := strings.Cut(values[0], " ")
	token = strings.TrimLeft(token, " ")
	if !ok || !strings.EqualFold(scheme, "bearer") || token == "" || strings.ContainsAny(token, " \t") {
		return "", errTokenMalformed
	}
	return token, nil
}

func (s *server) handleHealth(w http.ResponseWriter, _ *http.Request, _ *tokenRecord) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	io.WriteString(w, "ok\n")
}

func (s *server) handleMetrics(w http.ResponseWriter, _ *http.Request, _ *tokenRecord) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	s.metrics.write(w, s.tokens)
}

func (s *server) handleVersion(w http.ResponseWriter, _ *http.Request, _ *tokenRecord) {
	writeJSON(w, http.StatusOK, map[string]string{"version": buildVersion(), "api": "v1"})
}

func (s *server) handleCA(w http.ResponseWriter, _ *http.Request, _ *tokenRecord) {
	if s.ca == nil {
		writeError(w, http.StatusNotFound, "this daemon has no self-signed CA: TLS is off, or it serves a certificate of its own")
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"pem": string(s.ca.pem), "sha256": fingerprint(s.ca.cert.Raw)})
}

func (s *server) handleWhoami(w http.ResponseWriter, r *http.Request, caller *tokenRecord) {
	writeJSON(w, http.StatusOK, caller.info())
}

// createTokenRequest is the body of POST /api/v1/tokens.
type createTokenRequest struct {
	Name      string   `json:"name"`
	TTLSecs   int64    `json:"ttl_secs"`
	Scope     string   `json:"scope"`
	AllowFrom []string `json:"allow_from"`
}

func (s *server) handleCreateToken(w http.ResponseWriter, r *http.Request, caller *tokenRecord) {
	var req createTokenRequest
	if code, err := decodeJSON(w, r, &req); err != nil {
		writeError(w, code, err.Error())
		return
	}
	ttl := secondsArg(req.TTLSecs)
	allowFrom, err := parseAllowFrom(req.AllowFrom)
	if err == nil {
		err = validateTokenRequest(req.Name, req.Scope, ttl)
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	token, info, err := s.tokens.create(r.Context(), req.Name, req.Scope, ttl, s.audit.change("token.created", caller.Name, remoteIP(r)), allowFrom...)
	s.answerNewToken(w, req.Name, token, info, err)
}

// handleRotateToken gives a token a new secret; the old one works for
// grace_secs more (0: it is refused from the next request).
func (s *server) handleRotateToken(w http.ResponseWriter, r *http.Request, caller *tokenRecord) {
	var req struct {
		GraceSecs int64 `json:"grace_secs"`
	}
	if code, err := decodeJSON(w, r, &req); err != nil {
		writeError(w, code, err.Error())
		return
	}
	grace := secondsArg(req.GraceSecs)
	if grace < 0 || grace > maxTTL {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("grace_secs (--grace) must be between 0 and %d seconds", int64(maxTTL/time.Second)))
		return
	}
	name := r.PathValue("name")
	token, info, err := s.tokens.rotate(r.Context(), name, grace, s.audit.change("token.rotated", caller.Name, remoteIP(r)))
	s.answerNewToken(w, name, token, info, err)
}

// secondsArg turns a request's seconds into a duration, clamped to just
// beyond maxTTL on either side so that it cannot overflow.
func secondsArg(secs int64) time.Duration {
	return time.Duration(min(max(secs, -1), int64(maxTTL/time.Second)+1)) * time.Second
}

// answerNewToken answers create and rotate alike: 201 with the record and
// its secret, this once.
func (s *server) answerNewToken(w http.ResponseWriter, name, token string, info tokenInfo, err error) {
	if err != nil {
		s.answerStoreError(w, name, err)
		return
	}
	writeJSON(w, http.StatusCreated, newToken{info, token, s.login})
}

// answerStoreError turns the token store's refusals into answers.
func (s *server) answerStoreError(w http.ResponseWriter, name string, err error) {
	switch {
	case errors.Is(err, errNameTaken):
		writeError(w, http.StatusConflict, fmt.Sprintf("an active token named %q already exists; revoke it first or pick another name", name))
	case errors.Is(err, errNoSuchToken):
		writeError(w, http.StatusNotFound, fmt.Sprintf("no active token named %q", name))
	case errors.Is(err, errLastAdmin):
		writeError(w, http.StatusConflict, fmt.Sprintf("token %q is the last active admin token; revoking it would lock every admin out: create another admin token first, or restart the daemon with --api-token", name))
	case errors.Is(err, errMaxTTL):
		writeError(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, errAuditUnavailable): // fail closed: nothing unrecorded is done
		writeError(w, http.StatusServiceUnavailable, "the audit log cannot be written, so nothing was changed; the daemon's log says why")
	default:
		s.logger.Printf("error: token %q: %v", name, err)
		writeError(w, http.StatusInternalServerError, "could not store the token change")
	}
}

func (s *server) handleListTokens(w http.ResponseWriter, r *http.Request, _ *tokenRecord) {
	writeJSON(w, http.StatusOK, s.tokens.list())
}

func (s *server) handleRevokeToken(w http.ResponseWriter, r *http.Request, caller *tokenRecord) {
	name := r.PathValue("name")
	if err := s.tokens.revoke(name, s.audit.change("token.revoked", caller.Name, remoteIP(r))); err != nil {
		s.answerStoreError(w, name, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// handleEvents streams audit records as server-sent events: after
// Last-Event-ID or ?since=, the records still on disk first, then live
// ones. The subscription is taken before the files are opened and both
// carry seq numbers, so nothing is lost or repeated at the switch. A
// subscriber that falls behind never slows anyone: it loses records and is
// told how many. Each write gets its own deadline, so the stream outlives
// the server's write timeout while a client that stops reading is still cut
// off. (net/http clears the read deadline itself once the request is read.)
// The stream ends when the caller's token stops working (revoked, expired,
// rotated past its grace): each write checks it first, and a keep-alive
// comes at least every keepAlive.
func (s *server) handleEvents(w http.ResponseWriter, r *http.Request, caller *tokenRecord) {
	after, from, replaying, err := eventsStart(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	sub, files, head, err := s.audit.subscribe(replaying)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	defer s.audit.unsubscribe(sub)
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	st := &eventStream{w: w, rc: rc, tokens: s.tokens, caller: caller, last: min(after, head), known: from.IsZero()}
	if !replaying {
		st.last = head
	}
	err = replay(files, st.last, func(ev auditEvent, t time.Time) error {
		if !st.known && t.Before(from) {
			return nil
		}
		if !st.known {
			st.last, st.known = ev.seq-1, true
		}
		return st.send(ev)
	})
	if !st.known {
		st.last, st.known = head, true
	}
	if err == nil { // the id lets a client that saw nothing yet resume from here
		err = st.write(fmt.Sprintf("id: %d\n: live\n\n", st.last))
	}
	tick := time.NewTicker(s.keepAlive)
	defer tick.Stop()
	for err == nil {
		select {
		case ev, ok := <-sub.ch:
			if !ok {
				return // the daemon is stopping
			}
			err = st.send(ev)
		case <-tick.C:
			err = st.write(": keep-alive\n\n")
		case <-r.Context().Done():
			return
		}
	}
}

// eventsStart reads where a stream starts: after the record numbered by
// Last-Event-ID or ?since=N, or (?since=TIME, RFC 3339) at the first record
// from then on. With neither, only live records are sent.
func eventsStart(r *http.Request) (after uint64, from time.Time, replay bool, err error) {
	v := r.Header.Get("Last-Event-ID")
	if v == "" {
		v = r.URL.Query().Get("since")
	}
	if v == "" {
		return 0, time.Time{}, false, nil
	}
	if n, err := strconv.ParseUint(v, 10, 64); err == nil {
		return n, time.Time{}, true, nil
	}
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		return 0, t, true, nil
	}
	return 0, time.Time{}, false, fmt.Errorf("since %q is neither a record number nor an RFC 3339 time", redactTokens(v))
}

// eventStream writes one subscriber's events.
type eventStream struct {
	w      io.Writer
	rc     *http.ResponseController
	tokens *tokenStore
	caller *tokenRecord // the token that opened the stream
	last   uint64       // seq of the last record sent, or of the one the client saw
	known  bool         // false while a replay from a time has not reached its first record
}

// send writes ev unless it was sent already, after a warning when records
// between the last one and ev were lost.
func (st *eventStream) send(ev auditEvent) error {
	if ev.seq <= st.last {
		return nil
	}
	if ev.seq > st.last+1 {
		if err := st.write(fmt.Sprintf("event: warning\ndata: {\"warning\":\"missed %d events\"}\n\n", ev.seq-st.last-1)); err != nil {
			return err
		}
	}
	st.last = ev.seq
	return st.write(fmt.Sprintf("id: %d\nevent: %s\ndata: %s\n\n", ev.seq, ev.name, ev.line))
}

// write sends s, unless the caller's token no longer works.
func (st *eventStream) write(s string) error {
	if err := st.tokens.check(st.caller); err != nil {
		return err
	}
	st.rc.SetWriteDeadline(time.Now().Add(serverWriteTimeout))
	if _, err := io.WriteString(st.w, s); err != nil {
		return err
	}
	return st.rc.Flush()
}

func handleNotFound(w http.ResponseWriter, r *http.Request, _ *tokenRecord) {
	writeError(w, http.StatusNotFound, "not found")
}

// decodeJSON reads one JSON object of at most maxBodyBytes into v, refusing
// unknown, repeated and case-variant fields and trailing data. It returns
// the status to answer with.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) (int, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err == nil {
		err = checkKeys(body)
	}
	if err == nil {
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if err = dec.Decode(v); err == nil {
			if _, next := dec.Token(); !errors.Is(next, io.EOF) {
				err = errors.New("the body holds more than one JSON value")
			}
		}
	}
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		return http.StatusRequestEntityTooLarge, fmt.Errorf("request body is larger than %d bytes", maxBodyBytes)
	case errors.Is(err, io.EOF):
		return http.StatusBadRequest, errors.New("request body is empty; send a JSON object")
	case err != nil:
		return http.StatusBadRequest, fmt.Errorf("invalid JSON body: %s", strings.TrimPrefix(err.Error(), "json: "))
	}
	return 0, nil
}

// checkKeys refuses a JSON object whose keys repeat or are not lower-case
// ASCII. encoding/json keeps the last of repeated keys and matches keys
// without regard to case (even "ſcope" for "scope"), so {"name":"x",
// "Name":"y"} would mean something other than what a reader of the body or
// a proxy in front of the daemon sees. Anything but an object is left to the
// decoder, which says what is wrong with it.
func checkKeys(body []byte) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil
	}
	seen := map[string]bool{}
	for dec.More() {
		t, err := dec.Token()
		key, _ := t.(string)
		var value json.RawMessage
		if err != nil || dec.Decode(&value) != nil {
			return nil
		}
		switch {
		case strings.Trim(key, "abcdefghijklmnopqrstuvwxyz0123456789_") != "":
			return fmt.Errorf("unknown field %q: fields are spelled in lower case", key)
		case seen[key]:
			return fmt.Errorf("field %q appears more than once", key)
		}
		seen[key] = true
	}
	return nil
}

// writeJSON answers with v as compact JSON; the CLI indents for people.
func writeJSON(w http.ResponseWriter, code int, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		code, data = http.StatusInternalServerError, []byte(`{"error":"internal error"}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(data)+1))
	w.WriteHeader(code)
	w.Write(append(data, '\n'))
}

// writeError answers with {"error": msg}. Messages repeat user input (a
// token name, a path), so anything shaped like a token is redacted.
func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, struct {
		Error string `json:"error"`
	}{redactTokens(msg)})
}
