// The HTTP server: its listener and connection caps, routes, middleware and handlers.

package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"maps"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

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
	plainHTTP     bool       // --tls resolved to off; else every connection is TLS with getCert
	getCert       func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	notifySocket  string // systemd's $NOTIFY_SOCKET, or ""
	debug         bool   // --log-level debug
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
func (s *server) serve(ctx context.Context, ln *net.TCPListener, reload <-chan os.Signal) error {
	clientErrors := log.New(&rateLimitedLog{logger: s.logger}, "", 0)
	hs := s.httpServer(clientErrors)
	var l net.Listener = &connLimiter{TCPListener: ln, max: s.maxConns, perIP: s.maxConnsPerIP,
		keepAlives: hs.SetKeepAlivesEnabled, audit: s.audit, logger: clientErrors, bySource: map[string][]*limitedConn{}}
	if !s.plainHTTP {
		l = tls.NewListener(l, serverTLSConfig(s.getCert))
	}
	hs.RegisterOnShutdown(s.audit.closeSubscribers) // event streams never go idle by themselves
	auditDone := make(chan struct{})
	go s.audit.run(auditDone)
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(l) }()
	s.notify("READY=1")
	flush := time.NewTicker(lastUsedFlushInterval) // last-used times, written off the request path
	defer flush.Stop()
	var err error
	for stopping := false; !stopping; {
		select {
		case err = <-errc:
			err, stopping = fmt.Errorf("serve: %w", err), true
		case <-reload:
			s.reload()
		case <-flush.C:
			if ferr := s.tokens.flushLastUsed(); ferr != nil {
				s.logger.Printf("warning: %v", ferr)
			}
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
	}
	err = errors.Join(err, s.tokens.flushLastUsed())
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

// notify sends one state ("READY=1", "RELOADING=1", "STOPPING=1") to
// systemd over $NOTIFY_SOCKET, as sd_notify(3) does; with no socket it does
// nothing. An "@" socket is in the abstract namespace, which Go's unix
// address handling already understands.
func (s *server) notify(state string) {
	if s.notifySocket == "" {
		return
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: s.notifySocket, Net: "unixgram"})
	if err == nil {
		_, err = conn.Write([]byte(state))
		conn.Close()
	}
	if err != nil {
		s.logger.Printf("warning: notify systemd (%s): %v", state, err)
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
	keepAlives func(on bool) // http.Server.SetKeepAlivesEnabled
	audit      *auditLog     // its connections.limited tally
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
		case l.open >= l.max: // then bySource holds l.max (at least 1) connections
			busiest := slices.MaxFunc(slices.Collect(maps.Values(l.bySource)), func(a, b []*limitedConn) int { return len(a) - len(b) })
			if len(busiest) > own+1 { // the oldest of the busiest source, if it holds more than the newcomer's would
				evict = busiest[0]
			} else {
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
			l.audit.tally("connections.limited", "", evict.source, "evicted")
			l.logger.Printf("closed the oldest connection from %s, the busiest source, to make room for one from %s (--max-conns %d)", evict.source, lc.source, l.max)
		}
		if over == "" {
			return lc, nil
		}
		c.Close()
		l.audit.tally("connections.limited", "", lc.source, over)
		l.logger.Printf("refused a connection from %s: the %s cap is reached (--max-conns %d, --max-conns-per-ip %d)", lc.source, over, l.max, l.perIP)
	}
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
	l.bySource[c.source] = slices.DeleteFunc(l.bySource[c.source], func(x *limitedConn) bool { return x == c })
	if len(l.bySource[c.source]) == 0 {
		delete(l.bySource, c.source)
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

// routeTable is every route the daemon serves with the scope it needs,
// public ones included; nothing else registers a route. read is every GET
// under /api/v1/ and nothing that changes state; admin is everything. The
// tables in SECURITY.md ("What is public, what is protected" and "Scopes")
// list the same routes, line by line.
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
		rec := &statusRecorder{ResponseWriter: w}
		h := rec.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Cache-Control", "no-store")
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				s.logger.Printf("error: handler for %s panicked", r.Pattern)
				if rec.code == 0 {
					writeError(rec, http.StatusInternalServerError, "internal error")
				}
			}
			s.metrics.observe(r.Method, r.Pattern, cmp.Or(rec.code, http.StatusOK), time.Since(start))
		}()
		next.ServeHTTP(rec, r)
	})
}

type statusRecorder struct {
	http.ResponseWriter
	code int // 0 until the answer has begun
}

func (r *statusRecorder) WriteHeader(code int) {
	r.code = cmp.Or(r.code, code)
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	r.code = cmp.Or(r.code, http.StatusOK)
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
			s.metrics.authFailures.Add(1)
			s.audit.tally("auth.failed", "", remoteIP(r), failureReason(err))
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
			s.audit.tally("scope.denied", rec.Name, remoteIP(r), r.Pattern)
			writeError(w, http.StatusForbidden, fmt.Sprintf("token %q has scope %s; this needs %s", rec.Name, rec.Scope, need))
			return
		}
		next(w, r, rec)
	})
}

// remoteIP is the address a request came from, without its port.
func remoteIP(r *http.Request) string {
	host, _, _ := net.SplitHostPort(r.RemoteAddr) // net/http's is always host:port
	return host
}

// bearerToken reads "Authorization: Bearer TOKEN", the scheme in any case.
func bearerToken(h http.Header) (string, error) {
	values := h.Values("Authorization")
	if len(values) == 0 {
		return "", errTokenMissing
	}
	scheme, token, ok := strings.Cut(values[0], " ")
	token = strings.TrimLeft(token, " ")
	if len(values) > 1 || !ok || !strings.EqualFold(scheme, "bearer") || token == "" || strings.ContainsAny(token, " \t") {
		return "", errTokenMalformed
	}
	return token, nil
}

func (s *server) handleHealth(w http.ResponseWriter, _ *http.Request, _ *tokenRecord) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	io.WriteString(w, "ok\n")
}

func (s *server) handleMetrics(w http.ResponseWriter, _ *http.Request, _ *tokenRecord) {
	// Rendered under the metrics lock, sent after it: a client that does
	// not read cannot hold up every request that counts itself.
	var text bytes.Buffer
	s.metrics.write(&text, s.tokens)
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	w.Write(text.Bytes())
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
	if !decodeJSON(w, r, &req) {
		return
	}
	ttl := secondsArg(req.TTLSecs)
	allowFrom, err := parseAllowFrom(req.AllowFrom)
	if err = cmp.Or(err, validateTokenRequest(req.Name, req.Scope, ttl)); err != nil {
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
	if !decodeJSON(w, r, &req) {
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
	w.Header().Set("Content-Type", "text/event-stream")
	st := &eventStream{w: w, rc: http.NewResponseController(w), tokens: s.tokens, caller: caller, last: head}
	if replaying {
		err = st.sendStored(files, min(after, head), from, head)
	}
	if err == nil { // the id lets a client that saw nothing yet resume from here
		err = st.write(fmt.Sprintf("id: %d\n: live\n\n", st.last))
	}
	tick := time.NewTicker(s.keepAlive)
	defer tick.Stop()
	for err == nil {
		select {
		case ev, ok := <-sub:
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

// sendStored sends the records in files after the one numbered after, or
// (from not zero) from the first record at or after time from, and closes
// the files; head is the last record written before the subscription.
// Records written since may come twice, from a file and live: send sends
// each seq once. Lines that are not whole records are skipped: the stream
// shows the gap, `helyos audit verify` why. A file whose last record is at
// most seq after is not read at all, so a reconnecting client costs a read
// of the newest file's tail, not of them all.
func (st *eventStream) sendStored(files []*os.File, after uint64, from time.Time, head uint64) error {
	defer closeAll(files)
	st.last = after
	for _, f := range files {
		var rec auditRecord
		if line, _, err := tailLine(f); err == nil && json.Unmarshal(line, &rec) == nil && rec.Seq <= after {
			continue
		}
		err := eachLine(f, func(_ int, line []byte) error {
			var rec auditRecord
			if json.Unmarshal(line, &rec) != nil || rec.Time.Before(from) {
				return nil
			}
			if !from.IsZero() { // the first record from then on: nothing before it was missed
				st.last, from = rec.Seq-1, time.Time{}
			}
			return st.send(auditEvent{seq: rec.Seq, name: rec.Event, line: bytes.TrimSuffix(line, []byte("\n"))})
		})
		if err != nil {
			return err
		}
	}
	if !from.IsZero() { // no record from then on
		st.last = head
	}
	return nil
}

// eventsStart reads where a stream starts: after the record numbered by
// Last-Event-ID or ?since=N, or (?since=TIME, RFC 3339) at the first record
// from then on. With neither, only live records are sent.
func eventsStart(r *http.Request) (after uint64, from time.Time, replaying bool, err error) {
	v := cmp.Or(r.Header.Get("Last-Event-ID"), r.URL.Query().Get("since"))
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
}

// send writes ev unless it was sent already, after a warning when records
// between the last one and ev were lost.
func (st *eventStream) send(ev auditEvent) error {
	if ev.seq <= st.last {
		return nil
	}
	msg := fmt.Sprintf("id: %d\nevent: %s\ndata: %s\n\n", ev.seq, ev.name, ev.line)
	if ev.seq > st.last+1 {
		msg = fmt.Sprintf("event: warning\ndata: {\"warning\":\"missed %d events\"}\n\n", ev.seq-st.last-1) + msg
	}
	st.last = ev.seq
	return st.write(msg)
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
// unknown, repeated and case-variant fields and trailing data. When it
// refuses, it has answered and returns false.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err = cmp.Or(err, checkKeys(body)); err == nil {
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
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body is larger than %d bytes", maxBodyBytes))
	case errors.Is(err, io.EOF):
		writeError(w, http.StatusBadRequest, "request body is empty; send a JSON object")
	case err != nil:
		writeError(w, http.StatusBadRequest, "invalid JSON body: "+strings.TrimPrefix(err.Error(), "json: "))
	}
	return err == nil
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
	writeJSON(w, code, map[string]string{"error": redactTokens(msg)})
}
