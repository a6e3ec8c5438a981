package main

import (
	"cmp"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

const (
	defaultServer       = "http://localhost:6443"
	defaultPort         = "6443"
	expiryWarning       = 7 * 24 * time.Hour // warn when the token in use expires sooner
	requestTimeout      = 30 * time.Second
	tokenCommandTimeout = 10 * time.Second
	maxResponseBytes    = 4 << 20
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
	configPath             string        // $HELYOS_CONFIG, else ~/.helyos/config.toml
	configErr              error         // why configPath is unknown: returned by the commands that need it
	flags                  *flag.FlagSet // the command's own flags, once it made them; completion reads them
}

// parseGlobals takes the global flags out of args wherever they stand (up
// to a "--") and returns the rest in order.
func parseGlobals(args []string, std *stdio) (*globals, []string, error) {
	g := &globals{io: std}
	g.configPath, g.configErr = configPath()
	strs := map[string]*string{"context": &g.context, "server": &g.server, "token": &g.token}
	var rest []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			rest = append(rest, args[i:]...)
			break
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		p, ok := strs[name]
		switch {
		case !strings.HasPrefix(a, "-") || (!ok && name != "json"):
			rest = append(rest, a)
		case name == "json":
			if !hasValue {
				value = "true"
			}
			b, err := strconv.ParseBool(value)
			if err != nil {
				return nil, nil, usageErrorf("--json takes no value or true/false, not %q", value)
			}
			g.json = b
		case hasValue:
			*p = value
		case i+1 >= len(args):
			return nil, nil, usageErrorf("flag --%s needs a value", name)
		default:
			i++
			*p = args[i]
		}
	}
	return g, rest, nil
}

// newFlags makes a command's flag set; errors come back to the one error
// path instead of being printed by the flag package.
func (g *globals) newFlags(name, argsUsage, about string) *flag.FlagSet {
	flags := flag.NewFlagSet(name, flag.ContinueOnError)
	flags.SetOutput(io.Discard)
	g.flags = flags
	flags.Usage = func() {
		fmt.Fprintf(g.io.out, "Usage: helyos %s %s\n\n%s\n", name, argsUsage, about)
		printFlags(g.io.out, flags)
		fmt.Fprintf(g.io.out, "\nGlobal flags: --context NAME, --server URL, --token TOKEN, --json\n")
	}
	return flags
}

// parseFlags parses args, allowing flags after the positional arguments
// (`auth token create ci --ttl 3600`), and checks how many positional
// arguments there are. It returns them.
func parseFlags(flags *flag.FlagSet, args []string, minArgs, maxArgs int) ([]string, error) {
	// The flag package calls Usage on every parse error; print the help
	// only when it was asked for.
	help := flags.Usage
	flags.Usage = func() {}
	defer func() { flags.Usage = help }()
	var positional []string
	for {
		err := flags.Parse(args)
		if errors.Is(err, flag.ErrHelp) {
			help()
			return nil, err
		}
		if err != nil {
			return nil, withHint(usageErrorf("%s: %s", flags.Name(), redactTokens(flagError(err.Error()))), "run 'helyos "+flags.Name()+" --help'")
		}
		args = flags.Args()
		if len(args) == 0 {
			break
		}
		positional = append(positional, args[0])
		args = args[1:]
	}
	if n := len(positional); n < minArgs || n > maxArgs {
		return nil, withHint(usageErrorf("%s: wrong number of arguments (%d)", flags.Name(), n), "run 'helyos "+flags.Name()+" --help'")
	}
	return positional, nil
}

// flagError words an error of the flag package as helyos words the rest:
// a flag is --name, an unknown one is quoted as typed.
func flagError(msg string) string {
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
		return fmt.Sprintf("unknown flag %q", "--"+name)
	}
	if name, ok := strings.CutPrefix(msg, "flag needs an argument: -"); ok {
		return "flag --" + name + " needs a value"
	}
	return strings.NewReplacer("for flag -", "for flag --", "for -", "for --").Replace(msg)
}

// isHelp reports whether arg asks for help.
func isHelp(arg string) bool { return arg == "-h" || arg == "--help" }

// parseFlagsNoData is parseFlags for a command that prints no data: --json
// is refused there rather than silently ignored.
func (g *globals) parseFlagsNoData(flags *flag.FlagSet, args []string, minArgs, maxArgs int) ([]string, error) {
	pos, err := parseFlags(flags, args, minArgs, maxArgs)
	if err == nil && g.json {
		err = withHint(usageErrorf("%s: --json does not apply: it prints no data", flags.Name()), "drop --json; the exit code says whether it worked")
	}
	return pos, err
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

// printJSON writes v (or raw JSON: a json.RawMessage) to stdout with
// two-space indentation.
func (g *globals) printJSON(v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("format JSON: %w", err)
	}
	// Indented JSON holds no raw newline but its line breaks: sanitize each
	// line, escaping inside strings what a server may have sent raw.
	lines := strings.Split(string(data), "\n")
	for i := range lines {
		lines[i] = sanitize(lines[i])
	}
	_, err = fmt.Fprintln(g.io.out, strings.Join(lines, "\n"))
	return err
}

// request sends one request to the daemon. With --json it prints the answer
// as it came and returns done; else it decodes the answer into v. Its error
// starts with step, when there is one.
func (g *globals) request(step, method, path string, body, v any) (done bool, err error) {
	defer func() {
		if err != nil && step != "" {
			err = fmt.Errorf("%s: %w", step, err)
		}
	}()
	t, err := g.resolve()
	if err != nil {
		return false, err
	}
	if !g.json {
		return false, t.call(method, path, body, v)
	}
	var raw json.RawMessage
	if err := t.call(method, path, body, &raw); err != nil {
		return false, err
	}
	return true, g.printJSON(raw)
}

func formatTime(t *time.Time, unset string) string {
	if t == nil {
		return unset
	}
	return t.UTC().Format(time.RFC3339)
}

// ---- whoami, status, version ----

func cmdWhoami(g *globals, args []string) error {
	flags := g.newFlags("whoami", "", "Show the identity of the token in use.")
	if _, err := parseFlags(flags, args, 0, 0); err != nil {
		return err
	}
	warnLooseConfig(g)
	var info tokenInfo
	if done, err := g.request("", "GET", "/api/v1/whoami", nil, &info); done || err != nil {
		return err
	}
	tw := tabwriter.NewWriter(g.io.out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "name:\t%s\nscope:\t%s\nexpires:\t%s\nlast used:\t%s\nallowed from:\t%s\n", sanitize(info.Name), sanitize(info.Scope), formatTime(info.ExpiresAt, "never"), formatTime(info.LastUsedAt, "never"), allowedFrom(info.AllowFrom))
	return tw.Flush()
}

func cmdStatus(g *globals, args []string) error {
	flags := g.newFlags("status", "", "Check the daemon: reachable, its version, the TLS trust in use, and who you are.")
	if _, err := parseFlags(flags, args, 0, 0); err != nil {
		return err
	}
	t, err := g.resolve()
	if err != nil {
		return err
	}
	var ver struct{ Version, API string } // a daemon of another build may send more
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
	}{Server: t.server, Version: ver.Version, TLS: string(t.tlsMode), Auth: "no token"}
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
	auth := sanitize(redactTokens(st.Auth))
	if st.Whoami != nil {
		auth = fmt.Sprintf("ok, as %q (scope %s)", st.Whoami.Name, sanitize(st.Whoami.Scope))
	}
	tw := tabwriter.NewWriter(g.io.out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "server:\t%s\ncontext:\t%s\nversion:\t%s (api %s)\ntls:\t%s\nauth:\t%s\n", st.Server, cmp.Or(st.Context, "-"), sanitize(st.Version), sanitize(ver.API), st.TLS, auth)
	return tw.Flush()
}

func cmdVersion(g *globals, args []string) error {
	flags := g.newFlags("version", "", "Print the client's version and, when it can be reached, the daemon's.")
	if _, err := parseFlags(flags, args, 0, 0); err != nil {
		return err
	}
	var server struct{ Version string }
	g.public = true
	t, err := g.resolve()
	if err == nil {
		err = t.call("GET", "/api/v1/version", nil, &server)
	}
	// The client's version is the answer; a daemon that cannot be reached
	// is worth a warning after it, not a failure.
	if err != nil {
		defer fmt.Fprintf(g.io.err, "helyos: warning: no server version: %s\n", sanitize(redactTokens(err.Error())))
	}
	if g.json {
		return g.printJSON(struct {
			Client string `json:"client"`
			Server string `json:"server,omitempty"`
		}{buildVersion(), server.Version})
	}
	fmt.Fprintf(g.io.out, "client: %s\n", buildVersion())
	if server.Version != "" {
		fmt.Fprintf(g.io.out, "server: %s\n", sanitize(server.Version))
	}
	return nil
}

// warnLooseConfig warns when the config file, which may hold tokens, is
// readable by others.
func warnLooseConfig(g *globals) {
	if fi, err := os.Stat(g.configPath); err == nil && fi.Mode().Perm()&0o077 != 0 {
		fmt.Fprintf(g.io.err, "helyos: warning: %s is readable by others (mode %04o); run: chmod 600 %[1]s\n", g.configPath, fi.Mode().Perm())
	}
}

// ---- auth token ----

func tokenCommands() map[string]func(*globals, []string) error {
	return map[string]func(*globals, []string) error{
		"create": cmdTokenCreate, "ls": cmdTokenList, "list": cmdTokenList, "revoke": cmdTokenRevoke, "rotate": cmdTokenRotate,
	}
}

func cmdAuth(g *globals, args []string) error {
	subs := tokenCommands()
	switch {
	case len(args) > 1 && args[0] == "token" && subs[args[1]] != nil:
		return subs[args[1]](g, args[2:])
	case len(args) > 0 && isHelp(args[len(args)-1]):
		fmt.Fprint(g.io.out, authUsage)
		return flag.ErrHelp
	case len(args) == 0 || args[0] != "token":
		return subcommandError("auth", strings.Join(args[:min(len(args), 1)], " "), "token")
	}
	return subcommandError("auth token", strings.Join(args[1:min(len(args), 2)], " "), "create, ls, revoke, rotate")
}

// subcommandError tells a missing subcommand from a mistyped one.
func subcommandError(cmd, got, choices string) error {
	err := usageErrorf("%s: unknown subcommand %q; use %s", cmd, got, choices)
	if got == "" {
		err = usageErrorf("%s: give a subcommand: %s", cmd, choices)
	}
	return withHint(err, "run 'helyos "+cmd+" --help'")
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
	flags := g.newFlags("auth token create", "NAME [--ttl DURATION] [--scope admin|read] [--allow-from CIDR]...",
		"Mint a named API token. Its secret is printed once, on stdout.\n"+
			"A read token may use every GET under /api/v1/ and change nothing. A token with --allow-from is\n"+
			"accepted only from those source addresses. Behind a proxy the daemon sees the proxy's address\n"+
			"(X-Forwarded-For is not trusted), so bind to the proxy or not at all.")
	ttl := durationFlag(flags, "ttl", "lifetime: a `duration` such as 90s, 15m, 12h or 30d, or whole seconds (default: no expiry)")
	scope := flags.String("scope", "", "`scope`: admin (everything; the default) or read (every GET, no changes)")
	var allowFrom []string
	flags.Func("allow-from", "accept the token only from this source `CIDR`, e.g. 10.0.0.0/8 or 192.0.2.7/32 (repeatable)", func(v string) error {
		allowFrom = append(allowFrom, v)
		return nil
	})
	pos, err := parseFlags(flags, args, 1, 1)
	if err != nil {
		return err
	}
	body := map[string]any{"name": pos[0], "ttl_secs": int64(*ttl / time.Second), "allow_from": allowFrom}
	if *scope != "" {
		body["scope"] = *scope
	}
	return g.requestNewToken("create", pos[0], "/api/v1/tokens", body)
}

func cmdTokenRotate(g *globals, args []string) error {
	flags := g.newFlags("auth token rotate", "NAME [--grace DURATION]",
		"Give a token a new secret with the same name, scope, bindings and expiry. The new secret is\n"+
			"printed once, on stdout. The old one is refused from the next request, or after --grace.")
	grace := durationFlag(flags, "grace", "keep the old secret working this `duration` longer (90s, 15m, 12h, 1d), for clients that need time to pick up the new one")
	pos, err := parseFlags(flags, args, 1, 1)
	if err != nil {
		return err
	}
	path := "/api/v1/tokens/" + url.PathEscape(pos[0]) + "/rotate"
	if err := g.requestNewToken("rotate", pos[0], path, map[string]int64{"grace_secs": int64(*grace / time.Second)}); err != nil {
		return err
	}
	when := "now"
	if *grace > 0 {
		when = "in " + grace.String()
	}
	fmt.Fprintf(g.io.err, "helyos: the old secret stops working %s\n", when)
	return nil
}

// requestNewToken posts a request whose answer is a new secret (create,
// rotate) and shows it: the secret once, on stdout, and on stderr the line
// that logs in with it from elsewhere, which needs no trust prompt and
// carries no secret. With --json, the daemon's answer as it is.
func (g *globals) requestNewToken(verb, name, path string, body any) error {
	var created newToken
	if done, err := g.request(fmt.Sprintf("%s token %q", verb, name), "POST", path, body, &created); done || err != nil {
		return err
	}
	fmt.Fprintln(g.io.out, sanitize(created.Token))
	fmt.Fprintf(g.io.err, "helyos: token %q (scope %s, expires %s, allowed from %s): its secret is printed once, on stdout; save it now\n",
		created.Name, sanitize(created.Scope), formatTime(created.ExpiresAt, "never"), allowedFrom(created.AllowFrom))
	server, err := normalizeServer(created.Login.Server)
	fp := ""
	if created.Login.CASHA256 != nil && err == nil {
		fp = *created.Login.CASHA256
		_, err = normalizeFingerprint(fp)
	}
	// The line is for pasting into a shell: nothing in it may be more than
	// an address and a fingerprint, whatever the daemon sent.
	if err != nil || !shellSafe().MatchString(server+fp) {
		fmt.Fprintf(g.io.err, "helyos: warning: no login line: the daemon's address %q or CA fingerprint %q is malformed\n", redactTokens(created.Login.Server), redactTokens(fp))
		return nil
	}
	login := "helyos login " + server
	if fp != "" {
		login += " --ca-fingerprint " + fp
	}
	where := "to use it on another machine, run this there and paste the token"
	if isLoopback(hostOf(server)) {
		where = "only this machine reaches the daemon (loopback); to log in with the token here, run this and paste the token"
	}
	fmt.Fprintf(g.io.err, "helyos: %s:\n  %s --token-stdin\n", where, login)
	return nil
}

// shellSafe is all a login line built from a daemon's answer may hold.
var shellSafe = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z0-9.:/\[\]_-]+$`) })

// durationFlag declares a flag that takes a duration as parseDuration reads
// one.
func durationFlag(flags *flag.FlagSet, name, usage string) *time.Duration {
	d := new(time.Duration)
	flags.Func(name, usage, func(s string) (err error) {
		*d, err = parseDuration(s)
		return err
	})
	return d
}

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
	var s []string
	for _, p := range prefixes {
		s = append(s, p.String())
	}
	return cmp.Or(strings.Join(s, ", "), "any address")
}

func cmdTokenList(g *globals, args []string) error {
	flags := g.newFlags("auth token ls", "", "List the daemon's active API tokens (never their secrets).")
	if _, err := parseFlags(flags, args, 0, 0); err != nil {
		return err
	}
	var list []tokenInfo
	if done, err := g.request("list tokens", "GET", "/api/v1/tokens", nil, &list); done || err != nil {
		return err
	}
	tw := tabwriter.NewWriter(g.io.out, 0, 4, 2, ' ', 0)
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
	flags := g.newFlags("auth token revoke", "NAME", "Revoke an API token; it is refused from the very next request.")
	pos, err := g.parseFlagsNoData(flags, args, 1, 1)
	if err != nil {
		return err
	}
	if _, err := g.request(fmt.Sprintf("revoke token %q", pos[0]), "DELETE", "/api/v1/tokens/"+url.PathEscape(pos[0]), nil, nil); err != nil {
		return err
	}
	fmt.Fprintf(g.io.err, "helyos: revoked token %q\n", pos[0])
	return nil
}

// ---- audit, events ----

func cmdAudit(g *globals, args []string) error {
	if len(args) > 0 && isHelp(args[0]) {
		args = []string{"verify", "--help"} // the one subcommand's help
	}
	if len(args) == 0 || args[0] != "verify" {
		return subcommandError("audit", strings.Join(args[:min(len(args), 1)], " "), "verify")
	}
	flags := g.newFlags("audit verify", "[FILE...]", "Walk the audit log's hash chain and report the first record whose seq or prev does not follow.\nReads the files only: no daemon needed. Default: the data dir's audit.log.5 ... audit.log.1, audit.log.")
	dataDir := flags.String("data-dir", defaultDataDir(), "the daemon's data `dir`ectory")
	files, err := parseFlags(flags, args[1:], 0, 1<<16)
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
	fmt.Fprintf(g.io.out, "intact: %d records, seq %d to %d, in %s\n", sum.Records, sum.FirstSeq, sum.LastSeq, strings.Join(sum.Files, ", "))
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
	flags := g.newFlags("events", "[--follow] [--since DURATION|SEQ]", "Show the daemon's audit events: a table, or JSON lines with --json.\nWithout --since: every record still on disk, or with --follow only new ones.")
	follow := flags.Bool("follow", false, "keep streaming; reconnect after a dropped connection")
	since := flags.String("since", "", "start after record `SEQ`, or this long ago (90s, 15m, 12h, 7d)")
	if _, err := parseFlags(flags, args, 0, 0); err != nil {
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
		if progressed {
			failures = 0
		}
		if apiErr, ok := errors.AsType[*apiError](err); err == nil || (ok && apiErr.status != http.StatusServiceUnavailable) || lastID == "" {
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
		return "", usageErrorf("events: --since %q is neither a record number nor a duration such as 15m, 12h or 7d", redactTokens(since))
	}
	return time.Now().Add(-d).UTC().Format(time.RFC3339), nil
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
		cmp.Or(sanitize(deref(rec.Actor)), "-"), cmp.Or(sanitize(deref(rec.Remote)), "-"), cmp.Or(sanitize(deref(rec.Target)), "-"), sanitize(rec.Outcome), sanitize(string(detail)))
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
