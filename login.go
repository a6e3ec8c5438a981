// login, logout and context: the commands that add daemons to the config,
// choose between them and remove them.

package main

import (
	"cmp"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
)

// contextNameFor derives a context name from a server's host:
// https://helyos.acme.internal:6443 → helyos-acme-internal.
func contextNameFor(server string) string {
	words := strings.FieldsFunc(strings.ToLower(cmp.Or(hostOf(server), server)), func(c rune) bool {
		return (c < 'a' || c > 'z') && (c < '0' || c > '9')
	})
	name := strings.Join(words, "-")
	if name == "" || len(name) > 60 {
		return "helyos"
	}
	return name
}

func checkContextName(name string) error {
	if err := checkName("context", name); err != nil {
		return &usageError{err}
	}
	return nil
}

// loginFlags are login's own flags and its SERVER argument. The token given
// with --token is the global one, g.token.
type loginFlags struct {
	server                 string // normalized
	tokenStdin             bool
	tokenEnv, tokenCommand string
	caFile, caFingerprint  string
	insecure, noSetCurrent bool
	name, project          string
}

func cmdLogin(g *globals, args []string) error {
	f, err := parseLoginFlags(g, args)
	if err != nil {
		return err
	}
	g.warnPlainHTTP(f.server)
	// Checked before anything is saved: the context it would write (refused
	// when it holds another server), the CA it pins and the token it sends.
	cfg, err := g.loadConfig()
	if err != nil {
		return err
	}
	_, existing := loginContextName(cfg, f.server, f.name)
	if err := checkSameServer(existing, f.server); err != nil {
		return err
	}
	pin, err := g.loginTrust(f, existing)
	if err != nil {
		return err
	}
	token, source, err := g.loginToken(f)
	if err == nil {
		err = checkTokenShape(token, source)
	}
	if err != nil {
		return err
	}
	t := &target{server: f.server, token: token, tokenSource: source, ctx: existing, stderr: g.io.err}
	t.setClient(pin, f.insecure)
	var who tokenInfo
	if err := t.call("GET", "/api/v1/whoami", nil, &who); err != nil {
		return fmt.Errorf("login to %s failed, nothing was saved: %w", f.server, err)
	}
	err = g.editConfig(func(cfg *Config) (string, error) {
		return saveLogin(cfg, f, token, pin, who)
	})
	if err != nil {
		return fmt.Errorf("save context: %w", err)
	}
	return nil
}

func parseLoginFlags(g *globals, args []string) (*loginFlags, error) {
	f := &loginFlags{}
	flags := g.newFlags("login", "SERVER", "Check a token against a daemon, pin the daemon's CA, and save both as a context.\nSERVER without a scheme gets https://, without a port :6443.")
	// parseGlobals has taken --token out of args already (g.token): it is
	// declared here only so that help shows it.
	flags.String("token", "", "API `token`, seen by ps and shell history: prefer --token-stdin, --token-env or the prompt")
	flags.BoolVar(&f.tokenStdin, "token-stdin", false, "read the API token from stdin (one line; on a terminal, a paste that is not echoed)")
	flags.StringVar(&f.tokenEnv, "token-env", "", "read the token from environment `VAR` now and at every use; the file keeps only the name")
	flags.StringVar(&f.tokenCommand, "token-command", "", "run `command` (sh -c) now and at every use; the first line it prints is the token")
	flags.StringVar(&f.caFile, "ca-file", "", "pin the CA in this PEM `file` instead of fetching it")
	flags.StringVar(&f.caFingerprint, "ca-fingerprint", "", "require the daemon's CA to have this SHA-256 `fingerprint`; no prompt")
	flags.BoolVar(&f.insecure, "insecure-skip-tls-verify", false, "skip TLS verification entirely (insecure: exposes the token)")
	flags.StringVar(&f.name, "name", "", "context `name` (default: derived from the host)")
	flags.StringVar(&f.project, "project", "", "default `project` for this context")
	flags.BoolVar(&f.noSetCurrent, "no-set-current", false, "do not make this context the current one")
	pos, err := g.parseFlagsNoData(flags, args, 1, 1)
	if err != nil {
		return nil, err
	}
	if f.server, err = normalizeServer(pos[0]); err != nil {
		return nil, withHint(usageErrorf("login: %w", err), "give a server like cluster.example.com or https://10.0.0.5:6443")
	}
	if countTrue(g.token != "", f.tokenStdin, f.tokenEnv != "", f.tokenCommand != "") > 1 {
		return nil, usageErrorf("login: give the token one way only: --token, --token-stdin, --token-env or --token-command")
	}
	if err := checkTokenShape(g.token, "--token"); g.token != "" && err != nil {
		return nil, err
	}
	if err := checkEnvName(f.tokenEnv); err != nil {
		return nil, err
	}
	switch {
	case f.insecure && (f.caFile != "" || f.caFingerprint != ""):
		return nil, usageErrorf("login: --insecure-skip-tls-verify cannot be combined with --ca-file or --ca-fingerprint")
	case strings.HasPrefix(f.server, "http://") && (f.insecure || f.caFile != "" || f.caFingerprint != ""):
		return nil, usageErrorf("login: %s is plain HTTP; TLS flags do not apply", f.server)
	}
	if _, err := normalizeFingerprint(f.caFingerprint); f.caFingerprint != "" && err != nil {
		return nil, usageErrorf("login: --ca-fingerprint: %w", err)
	}
	if err := checkContextName(f.name); f.name != "" && err != nil {
		return nil, err
	}
	return f, nil
}

// saveLogin writes what a login checked into cfg and says what it did. It
// runs under the config lock, so it checks the context's name again.
func saveLogin(cfg *Config, f *loginFlags, token string, pin *x509.Certificate, who tokenInfo) (string, error) {
	name, c := loginContextName(cfg, f.server, f.name)
	if err := checkSameServer(c, f.server); err != nil {
		return "", err // created by another process since the first check
	}
	if c == nil {
		c = &Context{Name: name}
		cfg.Contexts = append(cfg.Contexts, c)
	}
	c.Server, c.TokenName, c.Insecure = f.server, who.Name, f.insecure
	c.Token, c.TokenEnv, c.TokenCommand = token, f.tokenEnv, f.tokenCommand
	if f.tokenEnv != "" || f.tokenCommand != "" {
		c.Token = ""
	}
	c.Project = cmp.Or(f.project, c.Project)
	c.CA, c.CASHA256 = "", ""
	if pin != nil {
		c.CA = encodeCA(pemEncode(pin))
		c.CASHA256 = fingerprint(pin.Raw)
	}
	done := fmt.Sprintf("logged in to %s as %q (scope %s); saved as context %q", f.server, who.Name, sanitize(who.Scope), name)
	if !f.noSetCurrent {
		cfg.CurrentContext = name
		done += ", now current"
	}
	return done, nil
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
	cand := base
	for i := 2; ; i++ {
		if c := cfg.Context(cand); c == nil || sameServer(c.Server, server) {
			return cand, c
		}
		cand = base + "-" + strconv.Itoa(i)
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
func (g *globals) loginTrust(f *loginFlags, existing *Context) (*x509.Certificate, error) {
	server, caFingerprint := f.server, f.caFingerprint
	if strings.HasPrefix(server, "http://") || f.insecure {
		return nil, nil
	}
	if f.caFile != "" {
		data, err := os.ReadFile(f.caFile)
		if err != nil {
			return nil, fmt.Errorf("read --ca-file: %w", err)
		}
		ca, err := parseCAPEM(data)
		if err != nil {
			return nil, fmt.Errorf("--ca-file %s: %w", f.caFile, err)
		}
		if caFingerprint != "" && !sameFingerprint(caFingerprint, fingerprint(ca.Raw)) {
			return nil, fmt.Errorf("--ca-file %s has fingerprint %s, not the %s given with --ca-fingerprint", f.caFile, fingerprint(ca.Raw), caFingerprint)
		}
		return ca, nil
	}
	if caFingerprint == "" && existing != nil && existing.CA != "" { // of this server: cmdLogin checked
		ca, err := existing.decodeCA()
		if err != nil {
			return nil, withHint(err, (&target{server: server, ctx: existing}).repin())
		}
		return ca, nil
	}
	ca, err := fetchCA(server)
	switch {
	case err != nil:
		return nil, err
	case ca == nil && caFingerprint != "":
		return nil, withHint(fmt.Errorf("%s has no self-signed CA to pin: it serves a certificate of its own", server),
			"drop --ca-fingerprint to let the system's trusted CAs check it, or pass --ca-file PEM with the CA that signed it")
	case ca == nil:
		fmt.Fprintf(g.io.err, "helyos: %s serves a certificate of its own, not a self-signed CA to pin: the system's trusted CAs check it\n", server)
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
func (g *globals) loginToken(f *loginFlags) (string, string, error) {
	switch {
	case g.token != "":
		return g.token, "--token", nil
	case f.tokenStdin && !isTerminal(g.io.in):
		line, err := readLine(g.io.in)
		if err != nil && err != io.EOF {
			return "", "", fmt.Errorf("read token from stdin: %w", err)
		}
		if line = strings.TrimSpace(line); line == "" {
			return "", "", errors.New("--token-stdin: stdin held no token")
		}
		return line, "stdin", nil
	case f.tokenEnv != "":
		tok, err := envToken(f.tokenEnv)
		return tok, "$" + f.tokenEnv, err
	case f.tokenCommand != "":
		tok, err := runTokenCommand(f.tokenCommand, g.io.err)
		return tok, "--token-command", err
	case os.Getenv("HELYOS_API_TOKEN") != "" && !f.tokenStdin:
		return os.Getenv("HELYOS_API_TOKEN"), "$HELYOS_API_TOKEN", nil
	case isTerminal(g.io.in): // --token-stdin on a terminal asks too
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
	flags := g.newFlags("logout", "[NAME]", "Forget the token of a context (default: the active one). Its server, CA pin and project stay, so logging in again is one command.")
	pos, err := g.parseFlagsNoData(flags, args, 0, 1)
	if err != nil {
		return err
	}
	pos = append(pos, "") // NAME is optional
	return g.editConfig(func(cfg *Config) (string, error) {
		c, err := g.namedOrActive(cfg, pos[0])
		if err != nil {
			return "", err
		}
		c.Token, c.TokenName, c.TokenEnv, c.TokenCommand = "", "", "", ""
		again := "helyos login " + c.Server
		// A bare login would pick the name derived from the host; point it
		// back at this context when that is another one (say "local").
		if derived, _ := loginContextName(cfg, c.Server, ""); derived != c.Name {
			again += " --name " + c.Name
		}
		return fmt.Sprintf("logged out of context %q; its server and CA pin are kept: log in again with '%s'", c.Name, again), nil
	})
}

// namedOrActive is the context called name, or the active one when name is
// empty; an error when there is none.
func (g *globals) namedOrActive(cfg *Config, name string) (*Context, error) {
	c, err := g.activeContext(cfg, name)
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
	if len(args) > 0 && subs[args[0]] != nil {
		return subs[args[0]](g, args[1:])
	}
	if len(args) > 0 && isHelp(args[0]) {
		fmt.Fprint(g.io.out, contextUsage)
		return flag.ErrHelp
	}
	return subcommandError("context", strings.Join(args[:min(len(args), 1)], " "), "ls, use, current, rename, rm or set")
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
	v := contextView{Name: c.Name, Server: c.Server, Project: c.Project, TLS: string(trustOf(c.Server, c.Insecure, c.CA != "")), TokenSource: "-", Active: c == active}
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

func cmdContextList(g *globals, args []string) error {
	flags := g.newFlags("context ls", "", "List contexts; * marks the active one.")
	if _, err := parseFlags(flags, args, 0, 0); err != nil {
		return err
	}
	cfg, err := g.loadConfig()
	if err != nil {
		return err
	}
	warnLooseConfig(g)
	active, _ := g.activeContext(cfg, "")
	views := []contextView{}
	for _, c := range cfg.Contexts {
		views = append(views, viewOf(c, active))
	}
	if g.json {
		return g.printJSON(views)
	}
	tw := tabwriter.NewWriter(g.io.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CURRENT\tNAME\tSERVER\tPROJECT\tTLS\tTOKEN")
	for _, v := range views {
		mark := ""
		if v.Active {
			mark = "*"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", mark, sanitize(v.Name), sanitize(v.Server), sanitize(cmp.Or(v.Project, "-")), v.TLS, sanitize(v.TokenSource))
	}
	return tw.Flush()
}

func cmdContextUse(g *globals, args []string) error {
	flags := g.newFlags("context use", "NAME", "Make NAME the current context.")
	pos, err := g.parseFlagsNoData(flags, args, 1, 1)
	if err != nil {
		return err
	}
	return g.editConfig(func(cfg *Config) (string, error) {
		c, err := g.namedOrActive(cfg, pos[0])
		if err != nil {
			return "", err
		}
		cfg.CurrentContext = c.Name
		return fmt.Sprintf("switched to context %q", pos[0]), nil
	})
}

func cmdContextCurrent(g *globals, args []string) error {
	flags := g.newFlags("context current", "", "Print the active context: --context, else $HELYOS_CONTEXT, else current-context, else the only one.")
	if _, err := parseFlags(flags, args, 0, 0); err != nil {
		return err
	}
	cfg, err := g.loadConfig()
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
	fmt.Fprintln(g.io.out, sanitize(c.Name))
	return nil
}

func cmdContextRename(g *globals, args []string) error {
	flags := g.newFlags("context rename", "OLD NEW", "Rename a context.")
	pos, err := g.parseFlagsNoData(flags, args, 2, 2)
	if err != nil {
		return err
	}
	oldName, newName := pos[0], pos[1]
	if err := checkContextName(newName); err != nil {
		return err
	}
	return g.editConfig(func(cfg *Config) (string, error) {
		c, err := g.namedOrActive(cfg, oldName)
		if err != nil {
			return "", err
		}
		if cfg.Context(newName) != nil {
			return "", withHint(fmt.Errorf("context %q already exists", newName), "remove it first with 'helyos context rm "+newName+"', or pick another name")
		}
		c.Name = newName
		if cfg.CurrentContext == oldName {
			cfg.CurrentContext = newName
		}
		return fmt.Sprintf("renamed context %q to %q", oldName, newName), nil
	})
}

func cmdContextRemove(g *globals, args []string) error {
	flags := g.newFlags("context rm", "NAME", "Remove a context: its server, token and pinned CA.")
	pos, err := g.parseFlagsNoData(flags, args, 1, 1)
	if err != nil {
		return err
	}
	return g.editConfig(func(cfg *Config) (string, error) {
		if !cfg.Remove(pos[0]) {
			return "", withHint(fmt.Errorf("context %q does not exist", pos[0]), "run 'helyos context ls' to see the contexts")
		}
		if cfg.CurrentContext == pos[0] {
			cfg.CurrentContext = ""
		}
		return fmt.Sprintf("removed context %q", pos[0]), nil
	})
}

func cmdContextSet(g *globals, args []string) error {
	flags := g.newFlags("context set", "NAME [--server URL] [--project P] [--token-env VAR | --token-command CMD]",
		"Edit a context, or create one. A context created here pins no CA: it trusts the system roots.")
	// parseGlobals has taken --server out of args already (g.server): it is
	// declared here only so that help shows it.
	flags.String("server", "", "daemon `URL`")
	project := flags.String("project", "", "default `project`")
	tokenEnv := flags.String("token-env", "", "read the token from environment `VAR` at every use")
	tokenCommand := flags.String("token-command", "", "run `command` (sh -c) at every use; its first line is the token")
	pos, err := g.parseFlagsNoData(flags, args, 1, 1)
	if err != nil {
		return err
	}
	name := pos[0]
	if err := checkContextName(name); err != nil {
		return err
	}
	switch {
	case g.token != "":
		return withHint(usageErrorf("context set: --token cannot be saved without a check"), "log in to save a checked token: helyos login SERVER --name "+name+", or use --token-env / --token-command")
	case *tokenEnv != "" && *tokenCommand != "":
		return usageErrorf("context set: give --token-env or --token-command, not both")
	}
	if err := checkEnvName(*tokenEnv); err != nil {
		return err
	}
	server, err := normalizeServer(g.server) // "" without --server
	if err != nil && g.server != "" {
		return usageErrorf("context set: --server: %w", err)
	}
	return g.editConfig(func(cfg *Config) (string, error) {
		c, verb := cfg.Context(name), "updated"
		if c == nil {
			if server == "" {
				return "", withHint(fmt.Errorf("context %q does not exist", name), "create it with: helyos context set "+name+" --server URL")
			}
			c, verb = &Context{Name: name}, "created"
			cfg.Contexts = append(cfg.Contexts, c)
		}
		if old, _ := normalizeServer(c.Server); strings.HasPrefix(old, "https://") && strings.HasPrefix(server, "http://") {
			return "", withHint(fmt.Errorf("context %q uses HTTPS; refusing to switch it to plain HTTP (%s), which would send its token unencrypted", name, server),
				"for a deliberate plain-HTTP daemon, log in to a context of its own: helyos login "+server+" --name NAME")
		}
		c.Server, c.Project = cmp.Or(server, c.Server), cmp.Or(*project, c.Project)
		if *tokenEnv != "" || *tokenCommand != "" {
			c.Token, c.TokenEnv, c.TokenCommand = "", *tokenEnv, *tokenCommand
		}
		return fmt.Sprintf("%s context %q", verb, name), nil
	})
}
