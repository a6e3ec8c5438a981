package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
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
	// files (the token store, certificates, the audit log and the files an
	// event stream replays, the data-dir lock) beyond its connections:
	// --max-conns is lowered to fit under the open-file limit.
	fdHeadroom = 64

	// bootstrapTokenFile is where the first-run token goes instead of the
	// log when the log is kept (the journal, which every member of adm
	// reads, or a JSON log shipper).
	bootstrapTokenFile = "bootstrap-token"
)

func defaultDataDir() string {
	if home, err := os.UserHomeDir(); err == nil && home != "" {
		return filepath.Join(home, ".helyos", "data")
	}
	return "/var/lib/helyos"
}

// daemonConfig is everything the daemon's flags decide.
type daemonConfig struct {
	host          string
	port          int
	dataDir       string
	tlsMode       string // auto, on, off
	insecureHTTP  bool
	apiToken      string
	advertiseAddr string // the host part of --advertise-addr
	advertisePort int    // its port, when it names one
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

func parseDaemonFlags(args []string, help io.Writer) (*daemonConfig, error) {
	cfg := &daemonConfig{notifySocket: os.Getenv("NOTIFY_SOCKET"), journal: stderrIsJournal(os.Getenv("JOURNAL_STREAM")), auditMaxSize: defaultAuditMaxSize}
	if _, err := parseFlags(daemonFlags(cfg, help), args, 0, 0); err != nil {
		return nil, err
	}
	cfg.apiToken = cmp.Or(cfg.apiToken, os.Getenv("HELYOS_API_TOKEN")) // read here, so --help never shows it
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("daemon: %w", err)
	}
	cfg.configPath, _ = configPath() // "" when there is no home
	return cfg, nil
}

// daemonFlags binds the daemon's flags to cfg; completion lists them too.
func daemonFlags(cfg *daemonConfig, help io.Writer) *flag.FlagSet {
	flags := flag.NewFlagSet("daemon", flag.ContinueOnError)
	flags.SetOutput(io.Discard)
	flags.StringVar(&cfg.host, "host", "127.0.0.1", "bind `address`")
	flags.IntVar(&cfg.port, "port", 6443, "REST API `port` (0 picks a free one)")
	flags.StringVar(&cfg.dataDir, "data-dir", defaultDataDir(), "`dir`ectory for state, keys and certificates")
	flags.StringVar(&cfg.tlsMode, "tls", "auto", "`mode`: auto (HTTPS unless bound to loopback without --tls-cert), on, off")
	flags.BoolVar(&cfg.insecureHTTP, "insecure-http", false, "acknowledge plain HTTP on a non-loopback address")
	flags.StringVar(&cfg.apiToken, "api-token", "", "API `token` to accept (default $HELYOS_API_TOKEN)")
	flags.StringVar(&cfg.advertiseAddr, "advertise-addr", "", "`host[:port]` clients dial: added to the certificate, the login hint and every new token's login line")
	flags.Func("tls-san", "extra certificate subject alternative `name` (repeatable)", func(v string) error {
		cfg.tlsSANs = append(cfg.tlsSANs, v)
		return nil
	})
	flags.StringVar(&cfg.tlsCert, "tls-cert", "", "serve this certificate `file` (PEM) instead of the self-signed one")
	flags.StringVar(&cfg.tlsKey, "tls-key", "", "private key `file` (PEM) for --tls-cert; SIGHUP re-reads both")
	flags.StringVar(&cfg.logFormat, "log-format", "text", "log `format`: text, or json (one object per line)")
	flags.Func("max-ttl", "created and rotated tokens may live at most this `duration` (90s, 12h, 30d); the bootstrap token is exempt", func(v string) (err error) {
		cfg.maxTTL, err = parseDuration(v)
		return err
	})
	flags.Func("audit-max-size", "rotate audit.log when it would grow past `size` (bytes, or with KiB, MiB, GiB; default 64MiB)", func(v string) (err error) {
		cfg.auditMaxSize, err = parseSize(v)
		return err
	})
	flags.StringVar(&cfg.logLevel, "log-level", "info", "`level`: info, or debug (adds why each bearer token was refused)")
	flags.IntVar(&cfg.maxConns, "max-conns", 4096, "most open client connections, in total")
	flags.IntVar(&cfg.maxConnsPerIP, "max-conns-per-ip", 256, "most open client connections from one source address")
	flags.Usage = func() {
		fmt.Fprintf(help, "Usage: helyos daemon [flags]\n\nRuns the helyos REST API server.\n")
		printFlags(help, flags)
	}
	return flags
}

// validate refuses flags that cannot work together or at all, before
// anything is read or written. One row per check, in the order they run.
func (c *daemonConfig) validate() error {
	for _, check := range []struct {
		bad bool
		err error
	}{
		{c.tlsMode != "auto" && c.tlsMode != "on" && c.tlsMode != "off", usageErrorf("--tls must be auto, on or off, not %q", c.tlsMode)},
		{c.logFormat != "text" && c.logFormat != "json", usageErrorf("--log-format must be text or json, not %q", c.logFormat)},
		{c.port < 0 || c.port > 65535, usageErrorf("--port must be between 0 and 65535, not %d", c.port)},
		{c.maxConns < 1, usageErrorf("--max-conns must be at least 1, not %d", c.maxConns)},
		{c.maxConnsPerIP < 1, usageErrorf("--max-conns-per-ip must be at least 1, not %d", c.maxConnsPerIP)},
		{c.logLevel != "info" && c.logLevel != "debug", usageErrorf("--log-level must be info or debug, not %q", c.logLevel)},
		{(c.tlsCert == "") != (c.tlsKey == ""), usageErrorf("--tls-cert and --tls-key go together: give both or neither")},
		{c.tlsCert != "" && c.tlsMode == "off", usageErrorf("--tls-cert and --tls-key need TLS, but --tls is off")},
	} {
		if check.bad {
			return check.err
		}
	}
	if c.advertiseAddr != "" {
		host, port, err := splitAdvertiseAddr(c.advertiseAddr)
		if err != nil {
			return withHint(usageErrorf("--advertise-addr %q: %w", redactTokens(c.advertiseAddr), err),
				"give the name or address clients dial, for example --advertise-addr cluster.example.com or 203.0.113.7:7443")
		}
		c.advertiseAddr, c.advertisePort = host, port
	}
	for _, san := range c.tlsSANs { // a certificate is public: no token, nothing but a name
		if !isHostName(strings.TrimPrefix(strings.Trim(san, "[]"), "*.")) {
			return withHint(usageErrorf("--tls-san %q is not a host name or IP address", redactTokens(san)),
				"give another name clients dial, for example --tls-san helyos.internal or --tls-san 10.0.0.5")
		}
	}
	if _, ok := parseAPIToken(c.apiToken); c.apiToken != "" && !ok {
		return withHint(usageErrorf("the API token from --api-token / HELYOS_API_TOKEN is not nxa-api_ followed by 64 lower-case hex characters"),
			"make one with: echo nxa-api_$(openssl rand -hex 32)")
	}
	return nil
}

// parseSize reads a byte count of at least 1 KiB, bare or with a KiB, MiB
// or GiB suffix.
func parseSize(v string) (int64, error) {
	num, unit := v, int64(1)
	for suffix, u := range map[string]int64{"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30} {
		if n, ok := strings.CutSuffix(v, suffix); ok {
			num, unit = n, u
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 1 || n > (1<<50)/unit || n*unit < 1<<10 {
		return 0, fmt.Errorf("%q is not a size of at least 1KiB, such as 1048576, 512KiB or 64MiB", v)
	}
	return n * unit, nil
}

// useTLS applies --tls: auto means HTTPS unless the bind host is loopback
// and no --tls-cert was given (an operator who brings a certificate wants
// it served).
func (c *daemonConfig) useTLS() bool {
	return c.tlsMode == "on" || (c.tlsMode == "auto" && (c.tlsCert != "" || !isLoopback(c.host)))
}

// lockDataDir refuses a data dir owned by another user or writable by group
// or others (whoever can write it can plant tokens and keys in it), then
// takes an exclusive flock on it, so a
// second daemon pointed at the same dir refuses to start instead of keeping
// its own copy of the token store (a revoke made through one daemon would not
// reach the other). Locking the folder creates no file. A folder that does
// not exist yet holds nothing to protect: then the lock is nil, and the
// caller locks again once it has created the folder. Closing the lock
// releases the flock.
func lockDataDir(dir string) (*os.File, error) {
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
	return f, nil
}

// runDaemon is `helyos daemon`. It returns when the daemon stops.
func runDaemon(args []string, std *stdio) error {
	cfg, err := parseDaemonFlags(args, std.out)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	reload := make(chan os.Signal, 1)
	signal.Notify(reload, syscall.SIGHUP)
	defer signal.Stop(reload)
	logger := newLogger(cfg.logFormat, cfg.journal, std.err)
	if err = cfg.run(ctx, reload, logger, std.err); err != nil && cfg.logFormat == "json" { // the reason, too, in the log's own format
		logger.Printf("error: %s", redactTokens(err.Error()))
		var h *hintError
		if errors.As(err, &h) {
			logger.Printf("hint: %s", redactTokens(h.hint))
		}
		return errLogged
	}
	return err
}

// stderrIsJournal tells whether stderr is the journal stream systemd names
// in $JOURNAL_STREAM ("DEV:INODE"). Children inherit the variable, a shell
// started by a service among them, so it counts only when it names stderr
// (systemd.exec(5)).
func stderrIsJournal(stream string) bool {
	var st syscall.Stat_t
	if stream == "" || syscall.Fstat(2, &st) != nil {
		return false
	}
	return stream == fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}

// newLogger writes the daemon's log: "DATE TIME helyos: message" by default,
// one JSON object per line with --log-format json, and no time stamp under
// journald, which stamps every line itself.
func newLogger(format string, journal bool, w io.Writer) *log.Logger {
	switch {
	case format == "json":
		return log.New(jsonLines{slog.NewJSONHandler(w, nil), journal}, "", 0)
	case journal:
		return log.New(w, "helyos: ", 0)
	}
	return log.New(w, "helyos: ", log.LstdFlags|log.Lmsgprefix)
}

// jsonLines turns each line the daemon logs into one JSON object: a line
// starting "error: ", "warning: " or "debug: " at that level, without the
// word, so a log shipper can alert on it; every other line at INFO.
type jsonLines struct {
	h       slog.Handler
	journal bool // the record then has no time, which slog leaves out
}

func (j jsonLines) Write(p []byte) (int, error) {
	msg, level := strings.TrimSuffix(string(p), "\n"), slog.LevelInfo
	word, rest, _ := strings.Cut(msg, ": ")
	if l, ok := map[string]slog.Level{"error": slog.LevelError, "warning": slog.LevelWarn, "debug": slog.LevelDebug}[word]; ok {
		msg, level = rest, l
	}
	var t time.Time
	if !j.journal {
		t = time.Now()
	}
	return len(p), j.h.Handle(context.Background(), slog.NewRecord(t, level, msg, 0))
}

// keepTokenOutOfLog is true when the log is kept where others read it: the
// journal, or a log shipper fed JSON. The first-run token then goes to a
// file instead. (A daemon that systemd notifies is a service: its log is
// the journal.)
func (c *daemonConfig) keepTokenOutOfLog() bool {
	return c.notifySocket != "" || c.journal || c.logFormat == "json"
}

// run starts the daemon. Nothing is written to the data dir or the config
// file until the guardrails have passed and the port is bound.
func (c *daemonConfig) run(ctx context.Context, reload <-chan os.Signal, logger *log.Logger, stderr io.Writer) error {
	lock, err := lockDataDir(c.dataDir)
	if err != nil {
		return err
	}
	defer func() { lock.Close() }() // the lock taken last; Close on a nil *os.File does nothing
	store, given, err := c.openTokenStore(ctx)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", hostPort(c.host, c.port))
	if err != nil {
		return fmt.Errorf("listen on %s port %d: %w", c.host, c.port, err)
	}
	defer ln.Close()
	if err := os.MkdirAll(c.dataDir, 0o700); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}
	if err := os.Chmod(c.dataDir, 0o700); err != nil { // taken back from a looser mode
		return fmt.Errorf("restrict data dir to its owner: %w", err)
	}
	if lock == nil { // the data dir is new
		if lock, err = lockDataDir(c.dataDir); err != nil {
			return err
		}
	}
	removeStaleTemps(c.dataDir, tokenStoreFile, caCertFile, caKeyFile, serverCertFile, serverKeyFile)
	audit, err := openAuditLog(c.dataDir, c.auditMaxSize, time.Now, logger)
	if err != nil {
		return err
	}
	defer audit.close()
	srv, err := c.newServer(store, audit, logger)
	if err != nil {
		return err
	}
	plaintext, err := c.bootstrapToken(ctx, store, given, audit, logger)
	if err != nil {
		return err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	srv.login = c.loginInfo(port, srv.ca)
	c.announce(srv, plaintext, stderr)
	// Under systemd ($NOTIFY_SOCKET for Type=notify, or stderr the
	// journal) the service's user is not the operator.
	if c.notifySocket == "" && !c.journal {
		c.writeLocalContext(ctx, srv, plaintext, port)
	}
	if store.activeCount() == 0 {
		logger.Printf("warning: no active API token; restart with --api-token to add one")
	}
	if err := c.recordStart(audit, port); err != nil {
		return err
	}
	// The last line of start-up: scripts and tests wait for it.
	logger.Printf("listening on %s://%s", c.scheme(), hostPort(c.host, port))
	return srv.serve(ctx, ln.(*net.TCPListener), reload)
}

// openTokenStore reads the token store and looks the --api-token up in it,
// then applies the plain-HTTP guardrail, which needs to know whether a
// usable token is configured.
func (c *daemonConfig) openTokenStore(ctx context.Context) (store *tokenStore, given *tokenRecord, err error) {
	path := filepath.Join(c.dataDir, tokenStoreFile)
	records, err := readTokenFile(path)
	if err != nil {
		return nil, nil, err
	}
	store = newTokenStore(path, records, time.Now)
	store.maxTTL = c.maxTTL
	if c.apiToken != "" {
		if given, err = store.findToken(ctx, c.apiToken); err != nil {
			return nil, nil, fmt.Errorf("check --api-token against the token store: %w", err)
		}
	}
	// The plain-HTTP guardrail: serving a reachable address in the clear
	// needs --tls off, --insecure-http and a configured token, all three;
	// loopback binds are never refused. Both messages are word for word from
	// the product specification (kept outside this repository);
	// TestGuardrails holds them to it.
	givenUsable := c.apiToken != "" && (given == nil || given.active(store.now()))
	switch {
	case c.useTLS() || isLoopback(c.host):
	case !c.insecureHTTP:
		return nil, nil, fmt.Errorf("refusing to serve a non-loopback address (%s) over plain HTTP; use --tls on, or pass BOTH --tls off and --insecure-http", c.host)
	case !givenUsable && store.activeCount() == 0:
		return nil, nil, errors.New("refusing to expose a non-loopback address with no API token configured; set --api-token / HELYOS_API_TOKEN first")
	}
	return store, given, nil
}

// newServer builds the server from the flags: --max-conns lowered to fit
// the open-file limit and, unless TLS is off, the operator's certificate
// files or the daemon's own CA.
func (c *daemonConfig) newServer(store *tokenStore, audit *auditLog, logger *log.Logger) (*server, error) {
	srv := &server{tokens: store, metrics: newMetrics(), logger: logger, notifySocket: c.notifySocket, audit: audit, keepAlive: eventKeepAlive, debug: c.logLevel == "debug",
		maxConns: c.maxConns, maxConnsPerIP: c.maxConnsPerIP, plainHTTP: !c.useTLS()}
	if limit := raiseFileLimit(); limit > 0 && limit < uint64(c.maxConns)+fdHeadroom {
		srv.maxConns = max(1, int(limit)-fdHeadroom)
		logger.Printf("warning: the open-file limit is %d, so --max-conns is lowered to %d; raise the limit (ulimit -n, LimitNOFILE=) to allow more", limit, srv.maxConns)
	}
	switch {
	case srv.plainHTTP:
		return srv, nil
	case c.tlsCert != "":
		srv.certs = &certFiles{certPath: c.tlsCert, keyPath: c.tlsKey, now: time.Now}
		srv.getCert = srv.certs.get
		return srv, srv.certs.load()
	}
	ca, err := loadOrCreateCA(c.dataDir, time.Now())
	if err != nil {
		return nil, err
	}
	cert, err := newServingCert(ca, c.dataDir, certSANs(c.host, c.advertiseAddr, c.tlsSANs), time.Now, srv.audit)
	if err != nil {
		return nil, err
	}
	srv.ca, srv.getCert = ca, cert.get
	return srv, nil
}

// announce logs what the operator must know at start-up: a reachable
// address in the clear, an --advertise-addr that changes nothing, where a
// token generated now is, and the CA to pin. An operator's --api-token is
// never printed.
func (c *daemonConfig) announce(srv *server, plaintext string, stderr io.Writer) {
	logger := srv.logger
	if !isLoopback(c.host) && !c.useTLS() {
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
		logger.Printf("log in %swith: %s", where, loginCommand(srv.login.Server, srv.ca))
	}
}

// scheme is how clients reach the daemon.
func (c *daemonConfig) scheme() string {
	if c.useTLS() {
		return "https"
	}
	return "http"
}

// hostPort joins a host, bracketed or not, and a port.
func hostPort(host string, port int) string {
	return net.JoinHostPort(strings.Trim(host, "[]"), strconv.Itoa(port))
}

// loginCommand is the command that logs in to server, pinning ca if there
// is one.
func loginCommand(server string, ca *certAuthority) string {
	if ca == nil {
		return "helyos login " + server
	}
	return "helyos login " + server + " --ca-fingerprint " + fingerprint(ca.cert.Raw)
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
func (c *daemonConfig) recordStart(audit *auditLog, port int) error {
	mode := "off"
	switch {
	case c.useTLS() && c.tlsCert != "":
		mode = "own certificate"
	case c.useTLS():
		mode = "self-signed"
	}
	return audit.record("daemon.started", "", "", "", outcomeSuccess, map[string]any{"version": buildVersion(), "tls": mode,
		"bind": hostPort(c.host, port), "advertise": orNull(c.advertiseAddr), "unclean_stop": audit.unclean})
}

// bootstrapToken makes sure the daemon has a token someone holds, and returns
// it in plaintext when this start knows it: generated now (an empty store),
// or given by --api-token. A given token that was revoked or has expired
// stays refused; a new given token replaces the earlier bootstrap token.
// A generated token that must stay out of the log has its file written
// before the store, so the store never holds a token that nobody was given.
//
// These changes are made by the operator through flags, not by a caller:
// their records have no actor and no remote.
func (c *daemonConfig) bootstrapToken(ctx context.Context, store *tokenStore, given *tokenRecord, audit *auditLog, logger *log.Logger) (string, error) {
	token, old, file := c.apiToken, (*tokenRecord)(nil), ""
	switch {
	case token != "" && given != nil && !given.active(store.now()):
		logger.Printf("warning: the token from --api-token / HELYOS_API_TOKEN (%q) was revoked or has expired; it stays refused", given.Name)
		return "", nil
	case token != "" && given != nil:
		return token, nil
	case token != "":
		old = store.activeNamed(bootstrapName)
	case len(store.records) > 0:
		return "", nil
	case c.keepTokenOutOfLog():
		token, file = newAPIToken(), filepath.Join(c.dataDir, bootstrapTokenFile)
		if err := writeBootstrapToken(file, token); err != nil {
			return "", err
		}
	default:
		token = newAPIToken()
	}
	event := "token.created"
	if old != nil {
		event = "token.rotated"
	}
	if _, err := store.add(ctx, token, &tokenRecord{Name: bootstrapName, Scope: scopeAdmin, Bootstrap: true}, 0, old, 0, audit.change(event, "", "")); err != nil {
		if file != "" {
			os.Remove(file)
		}
		return "", fmt.Errorf("store the bootstrap token: %w", err)
	}
	if old != nil {
		logger.Printf("a new --api-token replaces the earlier %q token, which is now revoked", bootstrapName)
	}
	return token, nil
}

// writeBootstrapToken stores the first-run token in path, readable by the
// daemon's user alone. O_EXCL: it never overwrites a file nor follows a link
// that someone left there.
func writeBootstrapToken(path, token string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return withHint(fmt.Errorf("%s already exists but the token store is empty", path),
			"it is left from an earlier first start: delete it, then start the daemon again")
	}
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	if err := writeAndClose(f, []byte(token+"\n")); err != nil {
		os.Remove(path)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// loginInfo is where clients on other machines reach this daemon, as its
// start-up hint and every new token's answer tell them: https://ADDR:PORT
// with ADDR the --advertise-addr, else the bind host when it is not a
// wildcard, else the hostname; and the CA to pin (nil without a self-signed CA).
func (c *daemonConfig) loginInfo(port int, ca *certAuthority) loginInfo {
	host := c.host
	switch {
	case c.advertiseAddr != "":
		host = c.advertiseAddr
	case isWildcard(c.host):
		host, _ = os.Hostname()
		host = cmp.Or(host, "localhost")
	}
	info := loginInfo{Server: c.scheme() + "://" + hostPort(host, cmp.Or(c.advertisePort, port))}
	if ca != nil {
		fp := fingerprint(ca.cert.Raw)
		info.CASHA256 = &fp
	}
	return info
}

// hostNamePattern is a name a certificate can carry: dot-separated labels of
// letters, digits and inner hyphens.
var hostNamePattern = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)
})

// isHostName is true for an IP address or a name a certificate can carry.
func isHostName(s string) bool {
	return net.ParseIP(s) != nil || (len(s) <= 253 && hostNamePattern().MatchString(s))
}

// splitAdvertiseAddr accepts what clients dial, a host or host:port (an IPv6
// address in brackets when a port follows), and nothing else: no scheme, no
// path, no user.
func splitAdvertiseAddr(s string) (host string, port int, err error) {
	host, portOK := strings.TrimSuffix(strings.TrimPrefix(s, "["), "]"), true
	if h, p, splitErr := net.SplitHostPort(s); splitErr == nil {
		port, err = strconv.Atoi(p)
		host, portOK = h, err == nil && port >= 1 && port <= 65535
	}
	if !portOK || !isHostName(host) {
		return "", 0, errors.New("want a host name or IP address, optionally with :PORT, and no scheme or path")
	}
	return host, port, nil
}

// writeLocalContext keeps a context named "local" for this daemon in the
// CLI's config on this machine. A start that knows a token adds one to a
// config without "local". A "local" that holds one of this daemon's active
// tokens is this daemon's own: when the daemon now listens elsewhere (another
// port, TLS on or off), its server and pin follow. Any other "local" is never
// changed; one line then says how to reach this daemon.
func (c *daemonConfig) writeLocalContext(ctx context.Context, srv *server, token string, port int) {
	if c.configPath == "" {
		return
	}
	if config, err := loadConfig(c.configPath); token == "" && (err != nil || config.Context("local") == nil) {
		return // a restart adds no context, and writes no file
	}
	host := "localhost"
	if !isLoopback(c.host) && !isWildcard(c.host) {
		host = c.host
	}
	server := c.scheme() + "://" + hostPort(host, port)
	var note string
	err := updateConfig(c.configPath, func(config *Config) (err error) {
		note, err = c.pointLocalContext(ctx, config, srv, token, server, port)
		return err
	})
	switch {
	case err != nil && !errors.Is(err, errLocalKept):
		srv.logger.Printf("warning: could not write the local CLI context: %v", err)
	case note != "":
		srv.logger.Print(note)
	}
}

// pointLocalContext points config's "local" context at server when it holds
// one of this daemon's active tokens, or adds it with token when there is
// none. It returns the line to log, and errLocalKept when config is not
// changed: then updateConfig writes nothing.
func (c *daemonConfig) pointLocalContext(ctx context.Context, config *Config, srv *server, token, server string, port int) (note string, err error) {
	local := config.Context("local")
	switch {
	case local != nil && sameServer(local.Server, server):
		return "", errLocalKept
	case local != nil:
		if rec, err := srv.tokens.findToken(ctx, local.Token); err != nil || rec == nil || !rec.active(srv.tokens.now()) {
			return fmt.Sprintf("CLI context \"local\" in %s is for %s, not this daemon, and is left as it is; reach this daemon by logging in with its token: %s --name local-%d",
				c.configPath, local.Server, loginCommand(server, srv.ca), port), errLocalKept
		}
		note = fmt.Sprintf("CLI context \"local\" in %s holds this daemon's token; it now points here, at %s (was %s)", c.configPath, server, local.Server)
	case token == "":
		return "", errLocalKept
	default:
		if config.CurrentContext == "" && len(config.Contexts) == 1 {
			config.CurrentContext = config.Contexts[0].Name // the only context, used until now, stays the one the CLI uses
		}
		local = &Context{Name: "local", Token: token, TokenName: bootstrapName, Project: "default"}
		config.Contexts = append(config.Contexts, local)
		config.CurrentContext = cmp.Or(config.CurrentContext, local.Name)
		note = fmt.Sprintf("wrote CLI context \"local\" to %s", c.configPath)
		if config.CurrentContext != local.Name {
			note = fmt.Sprintf("added CLI context \"local\" to %s; the current context stays %q: reach this daemon with 'helyos --context local COMMAND'", c.configPath, config.CurrentContext)
		}
	}
	local.Server, local.CA, local.CASHA256 = server, "", ""
	if srv.ca != nil {
		local.CA, local.CASHA256 = encodeCA(srv.ca.pem), fingerprint(srv.ca.cert.Raw)
	}
	return note, nil
}

var errLocalKept = errors.New("local is kept")
