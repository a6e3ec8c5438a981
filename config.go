package main

import (
	"bytes"
	"cmp"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"unicode/utf8"
)

// Context is one [context.NAME] table.
type Context struct {
	Name         string // the table name, not a key in the table
	Server       string // "server"
	Token        string // "token"
	TokenName    string // "token-name"
	TokenEnv     string // "token-env"
	TokenCommand string // "token-command"
	Project      string // "project"
	Insecure     bool   // "insecure"
	CA           string // "ca": base64 (std encoding) of the pinned CA PEM
	CASHA256     string // "ca-sha256"
}

// Config is the whole file. Contexts keep file order.
type Config struct {
	CurrentContext string
	Contexts       []*Context
}

// configField is one key of a context table. The reader, the writer and the
// check before saving all walk the same list, so a key cannot be added to one
// and forgotten in another.
type configField struct {
	key string
	str *string // set for string keys
	b   *bool   // set for boolean keys
}

// fields lists the context's keys in the order the writer puts them.
func (c *Context) fields() []configField {
	return []configField{
		{key: "server", str: &c.Server},
		{key: "token", str: &c.Token},
		{key: "token-name", str: &c.TokenName},
		{key: "token-env", str: &c.TokenEnv},
		{key: "token-command", str: &c.TokenCommand},
		{key: "project", str: &c.Project},
		{key: "insecure", b: &c.Insecure},
		{key: "ca", str: &c.CA},
		{key: "ca-sha256", str: &c.CASHA256},
	}
}

// Context returns the context called name, or nil if there is none.
func (c *Config) Context(name string) *Context {
	for _, ctx := range c.Contexts {
		if ctx.Name == name {
			return ctx
		}
	}
	return nil
}

// Remove deletes the context called name and reports whether it existed.
// It leaves CurrentContext alone: the caller decides what becomes current.
func (c *Config) Remove(name string) bool {
	n := len(c.Contexts)
	c.Contexts = slices.DeleteFunc(c.Contexts, func(ctx *Context) bool { return ctx.Name == name })
	return len(c.Contexts) < n
}

// Names returns the context names in file order, for listings and for
// "did you mean" errors.
func (c *Config) Names() []string {
	names := make([]string, 0, len(c.Contexts))
	for _, ctx := range c.Contexts {
		names = append(names, ctx.Name)
	}
	return names
}

// check refuses a Config that would not read back as itself, so a bug in a
// command fails the save instead of writing a file the next run cannot load.
func (c *Config) check() error {
	if !utf8.ValidString(c.CurrentContext) {
		return errors.New("current-context is not valid UTF-8")
	}
	for _, ctx := range c.Contexts {
		switch {
		case ctx.Name == "":
			return errors.New("a context has an empty name")
		case !utf8.ValidString(ctx.Name):
			return fmt.Errorf("context name %q is not valid UTF-8", ctx.Name)
		case c.Context(ctx.Name) != ctx: // an earlier context has its name
			return fmt.Errorf("two contexts are named %q", ctx.Name)
		}
		for _, f := range ctx.fields() {
			if f.str != nil && !utf8.ValidString(*f.str) {
				return fmt.Errorf("context %q: %s is not valid UTF-8", ctx.Name, f.key)
			}
		}
	}
	return nil
}

// encodeCA is how a pinned CA PEM is stored in the "ca" key.
func encodeCA(pemBytes []byte) string {
	return base64.StdEncoding.EncodeToString(pemBytes)
}

// decodeCA returns the context's pinned CA, or nil when it pins none. A
// value that is not one PEM CERTIFICATE is an error, never a fall back to
// the system roots: a damaged pin must not widen trust. Its callers add the
// hint, how to re-pin this context.
func (c *Context) decodeCA() (*x509.Certificate, error) {
	if c.CA == "" {
		return nil, nil
	}
	if c.Insecure {
		return nil, fmt.Errorf("context %q sets both insecure = true and a pinned ca, which contradict each other", c.Name)
	}
	data, err := base64.StdEncoding.DecodeString(c.CA)
	if err != nil {
		return nil, fmt.Errorf("context %q: pinned CA is not valid base64: %w", c.Name, err)
	}
	cert, err := parseCAPEM(data)
	if err != nil {
		return nil, fmt.Errorf("context %q: pinned CA: %w", c.Name, err)
	}
	if c.CASHA256 != "" && !sameFingerprint(c.CASHA256, fingerprint(cert.Raw)) {
		return nil, fmt.Errorf("context %q: ca-sha256 does not match the pinned ca, whose fingerprint is %s", c.Name, fingerprint(cert.Raw))
	}
	return cert, nil
}

// configPath is where the CLI's config lives: $HELYOS_CONFIG, else
// ~/.helyos/config.toml.
func configPath() (string, error) {
	if p := os.Getenv("HELYOS_CONFIG"); p != "" {
		return p, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", withHint(fmt.Errorf("cannot find the config file: %w", err),
			"set HELYOS_CONFIG to the config file's path, or set HOME")
	}
	return filepath.Join(home, ".helyos", "config.toml"), nil
}

// loadConfig reads the config at path. A missing file is an empty Config:
// a fresh machine has no contexts yet, which is not an error.
func loadConfig(path string) (*Config, error) {
	cfg, _, err := readConfig(path)
	return cfg, err
}

// readConfig is loadConfig that also returns the raw bytes (nil when the
// file does not exist), which updateConfig copies to the backup.
func readConfig(path string) (*Config, []byte, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return &Config{}, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read config: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, fmt.Errorf("read config: %w", err)
	}
	// Refused, as ssh does, when another user could have written it: it may
	// name a token-command, which the CLI would run as its caller. The open
	// file is checked, so the file read is the one checked.
	uid, me := fi.Sys().(*syscall.Stat_t).Uid, os.Getuid()
	if uid != 0 && int(uid) != me || fi.Mode().Perm()&0o022 != 0 {
		return nil, nil, withHint(fmt.Errorf("refusing config %s: it is owned by uid %d with mode %04o, but must belong to you (uid %d) or root and be writable by no one else",
			path, uid, fi.Mode().Perm(), me), fmt.Sprintf("if its content is yours: chown %d %s && chmod 600 %s", me, path, path))
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, nil, fmt.Errorf("read config: %w", err)
	}
	cfg, err := parseConfig(data)
	if err != nil {
		return nil, nil, withHint(fmt.Errorf("config %s: %w", path, err),
			fmt.Sprintf("fix the file by hand, or restore the previous version from %s.bak", path))
	}
	return cfg, data, nil
}

// updateConfig is the only way the CLI changes the config. It holds an
// exclusive flock on a sibling "config.toml.lock" while it reads the file
// fresh, runs fn and saves, so two processes (or goroutines) never lose each
// other's change. fn runs under the lock: it must not prompt or touch the
// network. If fn returns an error nothing is written. A file that does not
// parse is never overwritten. A symlinked config is written through the link.
func updateConfig(path string, fn func(*Config) error) error {
	// ~/.helyos is ours: kept 0700 even if someone loosened it. A folder
	// named through $HELYOS_CONFIG may be shared (/etc/helyos): left alone.
	home, _ := os.UserHomeDir()
	private := home != "" && filepath.Dir(path) == filepath.Join(home, ".helyos")
	if resolved, err := filepath.EvalSymlinks(path); err == nil {
		path = resolved
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("create config folder: %w", err)
	}
	if private {
		if err := os.Chmod(filepath.Join(home, ".helyos"), 0o700); err != nil {
			return fmt.Errorf("tighten the config folder: %w", err)
		}
	}
	unlock, err := lockConfig(path + ".lock")
	if err != nil {
		return err
	}
	defer unlock()
	removeStaleTemps(filepath.Dir(path), filepath.Base(path), filepath.Base(path)+".bak")
	cfg, old, err := readConfig(path)
	if err != nil {
		return err
	}
	if err := fn(cfg); err != nil {
		return err
	}
	if err := cfg.check(); err != nil {
		return fmt.Errorf("save config %s: %w", path, err)
	}
	data := cfg.marshal()
	if old != nil {
		// The backup undoes a bad save; it must not keep a token the change
		// removed (logout, context rm): then it gets the new content.
		backup := old
		if slices.ContainsFunc(tokenLikePattern().FindAll(old, -1), func(tok []byte) bool { return !bytes.Contains(data, tok) }) {
			backup = data
		}
		if err := writeFileAtomic(path+".bak", backup); err != nil {
			return fmt.Errorf("back up config: %w", err)
		}
	}
	if err := writeFileAtomic(path, data); err != nil {
		return fmt.Errorf("save config: %w", err)
	}
	return nil
}

// loadConfig reads the config file that parseGlobals found.
func (g *globals) loadConfig() (*Config, error) {
	if g.configErr != nil {
		return nil, g.configErr
	}
	return loadConfig(g.configPath)
}

// editConfig changes the config file that parseGlobals found, the way
// updateConfig does. edit returns the line that says what it did, printed
// once the change is saved.
func (g *globals) editConfig(edit func(*Config) (string, error)) error {
	if g.configErr != nil {
		return g.configErr
	}
	var done string
	err := updateConfig(g.configPath, func(cfg *Config) (err error) {
		done, err = edit(cfg)
		return err
	})
	if err == nil {
		fmt.Fprintln(g.io.err, "helyos: "+done)
	}
	return err
}

// lockConfig takes an exclusive flock on the lock file and returns its
// release. The lock file is never removed: deleting it would let a waiter
// lock an unlinked inode while a newcomer locks a fresh one.
func lockConfig(path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if errors.Is(err, syscall.ELOOP) {
		return nil, withHint(fmt.Errorf("lock config: %s is a symbolic link; refusing to follow it", path), "remove it: rm "+path)
	}
	if err != nil {
		return nil, fmt.Errorf("lock config: %w", err)
	}
	for err = syscall.EINTR; errors.Is(err, syscall.EINTR); {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock config %s: %w", path, err)
	}
	return func() { f.Close() }, nil // closing releases the flock
}

// writeFileAtomic is the one function every state file in the project is
// written with, but for audit.log (appended to, in audit.go) and the
// bootstrap-token file (created once with O_EXCL, in daemon.go). Readers see the old content or the new, never a mix: the data
// goes to a temporary file in the same folder (0600 from creation, so a secret
// is never readable by others, even briefly), is fsynced, renamed over path,
// and the folder is fsynced so the rename survives a crash. On failure the
// temporary file is removed and the old file is untouched.
func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = writeAndClose(f, data); err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := syncFolder(dir); err != nil {
		return fmt.Errorf("write %s: sync folder: %w", path, err)
	}
	return nil
}

// removeStaleTemps deletes the temporary files that writeFileAtomic, killed
// between its create and its rename, left in dir for the given file names.
// It touches only those files' temporaries, and the caller must hold their
// lock (the config lock, or the daemon's data-dir lock) so no live writer's
// file is pulled from under it.
func removeStaleTemps(dir string, names ...string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		ours := slices.ContainsFunc(names, func(name string) bool { return strings.HasPrefix(e.Name(), "."+name+".tmp-") })
		if ours && e.Type().IsRegular() {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

// writeAndClose writes and fsyncs f, and always closes it.
func writeAndClose(f *os.File, data []byte) error {
	_, err := f.Write(data)
	return cmp.Or(err, f.Sync(), f.Close())
}

// syncFolder fsyncs a folder so that a rename in it is durable.
func syncFolder(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	return cmp.Or(d.Sync(), d.Close())
}

const configHeader = "# Managed by `helyos`. Edit with `helyos context` / `helyos login`.\n"

// marshal writes the config in our TOML subset. Every string is a TOML basic
// string with everything unsafe escaped, so any value round-trips and any
// TOML 1.0 parser reads the same data. Empty strings and false are omitted.
// Invalid UTF-8 (which TOML cannot hold) is written as U+FFFD; updateConfig
// refuses such a Config before it gets here.
func (c *Config) marshal() []byte {
	var b strings.Builder
	b.WriteString(configHeader)
	if c.CurrentContext != "" {
		b.WriteString("current-context = " + tomlQuote(c.CurrentContext) + "\n")
	}
	for _, ctx := range c.Contexts {
		b.WriteString("\n[context." + tomlKey(ctx.Name) + "]\n")
		for _, f := range ctx.fields() {
			switch {
			case f.str != nil && *f.str != "":
				b.WriteString(f.key + " = " + tomlQuote(*f.str) + "\n")
			case f.b != nil && *f.b:
				b.WriteString(f.key + " = true\n")
			}
		}
	}
	return []byte(b.String())
}

// bareKeyChars are the characters a TOML key may hold without quotes.
const bareKeyChars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"

// escapedChars are written in a basic string as a backslash and the letter
// at the same place in escapeLetters. The writer and the reader share them.
const escapedChars, escapeLetters = "\"\\\b\t\n\f\r", "\"\\btnfr"

// tomlKey writes a key bare when TOML allows it, quoted otherwise.
func tomlKey(s string) string {
	if s == "" || strings.Trim(s, bareKeyChars) != "" {
		return tomlQuote(s)
	}
	return s
}

// tomlQuote returns s as a TOML basic string: the escapes above, \uXXXX for
// the other control characters, everything else as it is.
func tomlQuote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		i := strings.IndexRune(escapedChars, r)
		switch {
		case i >= 0:
			b.WriteString(`\` + escapeLetters[i:i+1])
		case isControl(r):
			fmt.Fprintf(&b, `\u%04X`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// isControl reports the characters TOML allows nowhere as they are (in a
// string they must be escaped): all below space but tab, and DEL.
func isControl(r rune) bool {
	return r < 0x20 && r != '\t' || r == 0x7f
}

// parseConfig reads what marshal writes, and what a person editing it by
// hand needs: blank lines, comments (alone or after a value), "basic"
// strings with the escapes marshal writes, 'literal' strings, true and
// false, bare or quoted keys, indentation and CRLF line ends. The rest of
// TOML (dotted keys, multi-line strings, \U escapes, arrays, numbers...) is
// refused by name, and so is any unknown or repeated key: a typo never
// silently drops a setting, and whatever is accepted means the same to any
// TOML 1.0 parser. It works line by line and never panics. Errors name the
// line and never quote a value, which may be a token.
func parseConfig(data []byte) (*Config, error) {
	r := &configReader{cfg: &Config{}, keys: map[string]bool{}}
	// CRLF line ends become LF; a lone CR stays, and is refused.
	for i, line := range strings.Split(strings.ReplaceAll(string(data), "\r\n", "\n"), "\n") {
		if err := r.line(line); err != nil {
			return nil, fmt.Errorf("line %d: %w", i+1, err)
		}
	}
	return r.cfg, nil
}

// configReader is the state of parseConfig between lines.
type configReader struct {
	cfg  *Config
	cur  *Context        // the table being read, nil before the first
	keys map[string]bool // keys seen in the current table (or at the top)
}

func (r *configReader) line(s string) error {
	if !utf8.ValidString(s) {
		return errors.New("invalid UTF-8: save the file as UTF-8")
	}
	// TOML allows a control character nowhere, not even in a comment: in a
	// string it must be an escape.
	if i := strings.IndexFunc(s, isControl); i >= 0 {
		return fmt.Errorf(`control character U+%04X (inside "..." write it as \u%04X)`, s[i], s[i])
	}
	if s = strings.TrimLeft(s, " \t"); s == "" || s[0] == '#' {
		return nil
	}
	if strings.HasPrefix(s, "\ufeff") { // TOML has no BOM; Notepad writes one
		return errors.New("byte order mark (U+FEFF): save the file as UTF-8 without BOM")
	}
	if s[0] == '[' {
		return r.table(s)
	}
	return r.keyValue(s)
}

// table reads a [context.NAME] header.
func (r *configReader) table(s string) error {
	rest, ok := strings.CutPrefix(s, "[context.")
	name, rest, err := readKey(rest)
	switch {
	case strings.HasPrefix(s, "[["):
		return errors.New("arrays of tables ([[...]]) are not supported here")
	case !ok:
		return errors.New("only [context.NAME] table headers are supported here, with no spaces inside the brackets")
	case err != nil:
		return err
	case !strings.HasPrefix(rest, "]"):
		return errors.New(`expected ] right after the context name (a name with a space goes in quotes: [context."my prod"])`)
	case name == "":
		return errors.New("empty context name")
	case r.cfg.Context(name) != nil:
		return fmt.Errorf("duplicate table [context.%s]", tomlKey(name))
	}
	r.keys = map[string]bool{}
	r.cur = &Context{Name: name}
	r.cfg.Contexts = append(r.cfg.Contexts, r.cur)
	return endOfLine(rest[1:], "the table header")
}

// keyValue reads "key = value" and stores it where it belongs.
func (r *configReader) keyValue(s string) error {
	key, rest, err := readKey(s)
	if err != nil {
		return err
	}
	rest, ok := strings.CutPrefix(strings.TrimLeft(rest, " \t"), "=")
	if !ok {
		return errors.New("expected = after the key") // the line may be a pasted token: not repeated
	}
	v, rest, err := readValue(strings.TrimLeft(rest, " \t"))
	if err != nil {
		return err
	}
	if err := endOfLine(rest, "the value"); err != nil {
		return err
	}
	return r.set(key, v)
}

// set stores v under key: current-context at the top of the file, a
// context's key in its table.
func (r *configReader) set(key string, v tomlValue) error {
	fields := []configField{{key: "current-context", str: &r.cfg.CurrentContext}}
	where := " before the first [context.NAME] table"
	if r.cur != nil {
		fields, where = r.cur.fields(), " in [context."+tomlKey(r.cur.Name)+"]"
	}
	switch {
	case r.cur != nil && key == "current-context":
		return errors.New("current-context must come before the first [context.NAME] table")
	case r.keys[key]:
		return fmt.Errorf("duplicate key %s%s", tomlKey(key), where)
	}
	r.keys[key] = true
	var known []string
	for _, f := range fields {
		if f.key != key {
			known = append(known, f.key)
			continue
		}
		switch {
		case f.str != nil && v.isBool:
			return fmt.Errorf("%s must be a string (in quotes)%s", key, where)
		case f.str != nil:
			*f.str = v.text
		case !v.isBool:
			return fmt.Errorf("%s must be true or false%s", key, where)
		default:
			*f.b = v.text == "true"
		}
		return nil
	}
	return fmt.Errorf("unknown key %s%s (known keys: %s)", tomlKey(key), where, strings.Join(known, ", "))
}

// tomlValue is a value as read: a string, or a boolean spelt true or false.
type tomlValue struct {
	text   string
	isBool bool
}

// endOfLine accepts the rest of a line only if it is blank or a comment.
func endOfLine(rest, after string) error {
	if rest = strings.TrimLeft(rest, " \t"); rest != "" && rest[0] != '#' {
		return fmt.Errorf("unexpected text after %s (a comment starts with #)", after)
	}
	return nil
}

// readKey reads a bare key or a quoted one, but not a dotted key (a.b).
func readKey(s string) (key, rest string, err error) {
	switch rest = strings.TrimLeft(s, bareKeyChars); {
	case strings.HasPrefix(s, `"`) || strings.HasPrefix(s, "'"):
		key, rest, err = readQuoted(s)
	case rest == s:
		err = errors.New("expected a key: letters, digits, _ and -, or a name in quotes")
	default:
		key = s[:len(s)-len(rest)]
	}
	if err == nil && strings.HasPrefix(strings.TrimLeft(rest, " \t"), ".") {
		err = errors.New(`dotted keys are not supported here: a name that holds a dot goes in quotes, "a.b"`)
	}
	return key, rest, err
}

// readValue reads a string, true or false. Its errors never repeat the
// value: an unquoted value may be a token.
func readValue(s string) (v tomlValue, rest string, err error) {
	switch {
	case strings.HasPrefix(s, `"""`), strings.HasPrefix(s, "'''"):
		return v, "", errors.New("multi-line strings are not supported here: write one line, with \\n for a line break")
	case strings.HasPrefix(s, `"`), strings.HasPrefix(s, "'"):
		v.text, rest, err = readQuoted(s)
		return v, rest, err
	case s == "" || s[0] == '#':
		return v, "", errors.New("missing value after =")
	}
	for _, word := range []string{"true", "false"} {
		if rest, ok := strings.CutPrefix(s, word); ok {
			return tomlValue{text: word, isBool: true}, rest, nil
		}
	}
	return v, "", errors.New(`invalid value: strings need quotes ("..." or '...'), booleans are true or false; numbers, dates, arrays and inline tables are not supported here`)
}

// readQuoted reads a "basic" string, with the escapes the writer emits, or
// a 'literal' one, with none. Either ends on its line.
func readQuoted(s string) (str, rest string, err error) {
	quote := s[0]
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		switch {
		case s[i] == quote:
			return b.String(), s[i+1:], nil
		case s[i] == '\\' && quote == '"' && i+1 < len(s):
			n, err := readEscape(s[i+1:], &b)
			if err != nil {
				return "", "", fmt.Errorf(`%w; a backslash itself is \\ (or use 'single quotes', which take \ as it is)`, err)
			}
			i += n
		default:
			b.WriteByte(s[i])
		}
	}
	return "", "", errors.New("unterminated string (a string must end on the same line)")
}

// readEscape decodes the escape that starts s, just after a backslash,
// into b and returns its length.
func readEscape(s string, b *strings.Builder) (int, error) {
	switch i := strings.IndexByte(escapeLetters, s[0]); {
	case i >= 0:
		b.WriteByte(escapedChars[i])
		return 1, nil
	case s[0] == 'U':
		return 0, errors.New(`\U escapes are not supported here: write the character itself`)
	case s[0] == 'u': // the writer's \uXXXX is for control characters only
		n, err := strconv.ParseUint(s[1:min(5, len(s))], 16, 32)
		if err != nil || len(s) < 5 || !isControl(rune(n)) {
			return 0, errors.New(`\u needs 4 hex digits naming a control character other than tab: write any other character as it is`)
		}
		b.WriteRune(rune(n))
		return 5, nil
	}
	return 0, errors.New(`invalid escape: use \" \\ \b \t \n \f \r or \uXXXX`)
}
