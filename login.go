// login, logout and context: the commands that add daemons to the config,
// choose between them and remove them.

package main

import (
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"
)

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
