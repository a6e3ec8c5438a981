package main

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
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
		if ctx != nil && ctx.Name == name {
			return ctx
		}
	}
	return nil
}

// Remove deletes the context called name and reports whether it existed.
// It leaves CurrentContext alone: the caller decides what becomes current.
func (c *Config) Remove(name string) bool {
	for i, ctx := range c.Contexts {
		if ctx != nil && ctx.Name == name {
			c.Contexts = slices.Delete(c.Contexts, i, i+1)
			return true
		}
	}
	return false
}

// Names returns the context names in file order, for listings and for
// "did you mean" errors.
func (c *Config) Names() []string {
	names := make([]string, 0, len(c.Contexts))
	for _, ctx := range c.Contexts {
		if ctx != nil {
			names = append(names, ctx.Name)
		}
	}
	return names
}

// check refuses a Config that would not read back as itself, so a bug in a
// command fails the save instead of writing a file the next run cannot load.
func (c *Config) check() error {
	if !utf8.ValidString(c.CurrentContext) {
		return errors.New("current-context is not valid UTF-8")
	}
	seen := make(map[string]bool, len(c.Contexts))
	for _, ctx := range c.Contexts {
		switch {
		case ctx == nil:
			return errors.New("a context is nil")
		case ctx.Name == "":
			return errors.New("a context has an empty name")
		case !utf8.ValidString(ctx.Name):
			return fmt.Errorf("context name %q is not valid UTF-8", ctx.Name)
		case seen[ctx.Name]:
			return fmt.Errorf("two contexts are named %q", ctx.Name)
		}
		seen[ctx.Name] = true
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

// decodeCA returns the PEM bytes of the context's pinned CA, or nil when it
// pins none. A value that is not one PEM CERTIFICATE is an error, never a
// fall back to the system roots: a damaged pin must not widen trust.
func (c *Context) decodeCA() ([]byte, error) {
	if c.CA == "" {
		return nil, nil
	}
	hint := fmt.Sprintf("log in again to pin the CA (helyos login %s), or fix \"ca\" in the config", c.Server)
	if c.Insecure {
		return nil, withHint(fmt.Errorf("context %q sets both insecure = true and a pinned ca, which contradict each other", c.Name), hint)
	}
	data, err := base64.StdEncoding.DecodeString(c.CA)
	if err != nil {
		return nil, withHint(fmt.Errorf("context %q: pinned CA is not valid base64: %w", c.Name, err), hint)
	}
	block, rest := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, withHint(fmt.Errorf("context %q: pinned CA is not a PEM certificate", c.Name), hint)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, withHint(fmt.Errorf("context %q: pinned CA has data after the certificate", c.Name), hint)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, withHint(fmt.Errorf("context %q: pinned CA cannot be parsed: %w", c.Name, err), hint)
	}
	if c.CASHA256 != "" && !sameFingerprint(c.CASHA256, fingerprint(cert.Raw)) {
		return nil, withHint(fmt.Errorf("context %q: ca-sha256 does not match the pinned ca, whose fingerprint is %s", c.Name, fingerprint(cert.Raw)), hint)
	}
	return data, nil
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
	if errors.Is(err, fs.ErrNotExist) {
		return &Config{}, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read config: %w", err)
	}
	defer f.Close()
	if err := checkConfigOwner(f); err != nil {
		return nil, nil, err
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

// checkConfigOwner refuses, as ssh does, a config file that another user
// could have written: it may name a token-command, which the CLI would run
// as its caller. It checks the open file, so the file read is the one
// checked.
func checkConfigOwner(f *os.File) error {
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	uid, me := fi.Sys().(*syscall.Stat_t).Uid, os.Getuid()
	if (uid == 0 || int(uid) == me) && fi.Mode().Perm()&0o022 == 0 {
		return nil
	}
	return withHint(fmt.Errorf("refusing config %s: it is owned by uid %d with mode %04o, but must belong to you (uid %d) or root and be writable by no one else",
		f.Name(), uid, fi.Mode().Perm(), me), fmt.Sprintf("if its content is yours: chown %d %s && chmod 600 %s", me, f.Name(), f.Name()))
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
		for _, tok := range tokenLikePattern.FindAll(old, -1) {
			if !bytes.Contains(data, tok) {
				backup = data
			}
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
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock config %s: %w", path, err)
	}
	return func() { f.Close() }, nil // closing releases the flock
}

// writeFileAtomic is the one function every state file in the project is
// written with. Readers see the old content or the new, never a mix: the data
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
	tmp := f.Name()
	if err := writeAndClose(f, data); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
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
		for _, name := range names {
			if strings.HasPrefix(e.Name(), "."+name+".tmp-") && e.Type().IsRegular() {
				os.Remove(filepath.Join(dir, e.Name()))
			}
		}
	}
}

// writeAndClose writes and fsyncs f, and always closes it.
func writeAndClose(f *os.File, data []byte) error {
	_, err := f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// syncFolder fsyncs a folder so that a rename in it is durable.
func syncFolder(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
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
		if ctx == nil {
			continue
		}
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

// tomlKey writes a key bare when TOML allows it, quoted otherwise.
func tomlKey(s string) string {
	if s == "" {
		return tomlQuote(s)
	}
	for i := 0; i < len(s); i++ {
		if !isBareKeyByte(s[i]) {
			return tomlQuote(s)
		}
	}
	return s
}

func isBareKeyByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// tomlQuote returns s as a TOML basic string.
func tomlQuote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\b':
			b.WriteString(`\b`)
		case '\t':
			b.WriteString(`\t`)
		case '\n':
			b.WriteString(`\n`)
		case '\f':
			b.WriteString(`\f`)
		case '\r':
			b.WriteString(`\r`)
		default:
			if r < 0x20 || r == 0x7f {
				fmt.Fprintf(&b, `\u%04X`, r)
			} else {
				b.WriteRune(r)
			}
		}
	}
	b.WriteByte('"')
	return b.String()
}

// parseConfig reads our TOML subset: comments, blank lines, basic and
// literal strings, true/false, current-context at the top and one
// [context.NAME] table per context. Anything else is an error "line N: ...",
// never skipped, so a typo cannot silently drop a setting. It works line by
// line (the subset has no multi-line values) and is written to return an
// error, never panic, on any input. Errors never quote a value, which may be
// a token.
func parseConfig(data []byte) (*Config, error) {
	r := &configReader{cfg: &Config{}, tables: map[string]bool{}, keys: map[string]bool{}}
	lines := strings.Split(string(data), "\n")
	for i, line := range lines {
		if i < len(lines)-1 {
			line = strings.TrimSuffix(line, "\r") // CRLF; a lone CR stays an error
		}
		if err := r.line(line); err != nil {
			return nil, fmt.Errorf("line %d: %w", i+1, err)
		}
	}
	return r.cfg, nil
}

// configReader is the state of parseConfig between lines.
type configReader struct {
	cfg    *Config
	cur    *Context        // the table being filled, nil before the first
	tables map[string]bool // context names seen
	keys   map[string]bool // keys seen in the current table (or at the top)
}

func (r *configReader) line(s string) error {
	if !utf8.ValidString(s) {
		return errors.New("invalid UTF-8")
	}
	sc := &tomlScanner{s: s}
	sc.skipSpace()
	switch sc.peek() {
	case 0:
		if sc.eof() {
			return nil
		}
		return sc.end("")
	case '#':
		return sc.end("")
	case '[':
		return r.table(sc)
	default:
		return r.keyValue(sc)
	}
}

// table reads a [context.NAME] header.
func (r *configReader) table(sc *tomlScanner) error {
	sc.i++ // '['
	if sc.peek() == '[' {
		return errors.New("arrays of tables ([[...]]) are not supported")
	}
	keys, err := sc.key()
	if err != nil {
		return err
	}
	if sc.peek() != ']' {
		return fmt.Errorf("expected ] to close the table header, found %s", sc.found())
	}
	sc.i++
	if err := sc.end("the table header"); err != nil {
		return err
	}
	switch {
	case len(keys) == 1 && keys[0] == "context":
		return errors.New("table [context] needs a name: [context.NAME]")
	case len(keys) != 2 || keys[0] != "context":
		return fmt.Errorf("unknown table [%s]; only [context.NAME] tables are allowed", dottedKey(keys))
	case keys[1] == "":
		return errors.New("empty context name")
	case r.tables[keys[1]]:
		return fmt.Errorf("duplicate table [context.%s]", tomlKey(keys[1]))
	}
	r.tables[keys[1]] = true
	r.keys = map[string]bool{}
	r.cur = &Context{Name: keys[1]}
	r.cfg.Contexts = append(r.cfg.Contexts, r.cur)
	return nil
}

// keyValue reads "key = value" and stores it where it belongs.
func (r *configReader) keyValue(sc *tomlScanner) error {
	keys, err := sc.key()
	if err != nil {
		return err
	}
	if sc.peek() != '=' {
		return fmt.Errorf("expected = after key %s, found %s", dottedKey(keys), sc.found())
	}
	sc.i++
	sc.skipSpace()
	v, err := sc.value()
	if err != nil {
		return err
	}
	if err := sc.end("the value"); err != nil {
		return err
	}
	name := dottedKey(keys)
	if r.keys[name] {
		return fmt.Errorf("duplicate key %s%s", name, r.where())
	}
	r.keys[name] = true
	if r.cur == nil {
		if name != "current-context" {
			return fmt.Errorf("unknown key %s before the first [context.NAME] table", name)
		}
		if v.isBool {
			return errors.New("current-context must be a string (in quotes)")
		}
		r.cfg.CurrentContext = v.s
		return nil
	}
	if name == "current-context" {
		return errors.New("current-context must come before the first [context.NAME] table")
	}
	return r.set(name, v)
}

// set stores v under key in the current context.
func (r *configReader) set(key string, v tomlValue) error {
	for _, f := range r.cur.fields() {
		if f.key != key {
			continue
		}
		switch {
		case f.str != nil && v.isBool:
			return fmt.Errorf("%s must be a string (in quotes)%s", key, r.where())
		case f.str != nil:
			*f.str = v.s
		case !v.isBool:
			return fmt.Errorf("%s must be true or false%s", key, r.where())
		default:
			*f.b = v.b
		}
		return nil
	}
	return fmt.Errorf("unknown key %s%s", key, r.where())
}

// where names the current table for messages.
func (r *configReader) where() string {
	if r.cur == nil {
		return ""
	}
	return " in [context." + tomlKey(r.cur.Name) + "]"
}

// dottedKey shows a key as TOML would spell it.
func dottedKey(keys []string) string {
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = tomlKey(k)
	}
	return strings.Join(parts, ".")
}

// tomlValue is a parsed value: a string or a boolean.
type tomlValue struct {
	s      string
	b      bool
	isBool bool
}

// tomlScanner walks one line. Every read checks the bounds, so no input
// can make it index past the end.
type tomlScanner struct {
	s string
	i int
}

func (sc *tomlScanner) eof() bool { return sc.i >= len(sc.s) }

// peek returns the next byte, or 0 at the end of the line.
func (sc *tomlScanner) peek() byte {
	if sc.eof() {
		return 0
	}
	return sc.s[sc.i]
}

func (sc *tomlScanner) skipSpace() {
	for !sc.eof() && (sc.s[sc.i] == ' ' || sc.s[sc.i] == '\t') {
		sc.i++
	}
}

// found describes the next character for an error message.
func (sc *tomlScanner) found() string {
	if sc.eof() {
		return "end of line"
	}
	r, _ := utf8.DecodeRuneInString(sc.s[sc.i:])
	return fmt.Sprintf("%q", r)
}

// end accepts the rest of the line only if it is blank or a comment.
func (sc *tomlScanner) end(after string) error {
	sc.skipSpace()
	if sc.eof() {
		return nil
	}
	if sc.s[sc.i] != '#' {
		if after == "" {
			return fmt.Errorf("unexpected %s", sc.found())
		}
		return fmt.Errorf("unexpected %s after %s", sc.found(), after)
	}
	for _, c := range []byte(sc.s[sc.i:]) {
		if isControl(c) {
			return fmt.Errorf("control character U+%04X in a comment", c)
		}
	}
	sc.i = len(sc.s)
	return nil
}

// isControl reports the characters TOML forbids unescaped in strings and
// comments: everything below space except tab, and DEL.
func isControl(c byte) bool {
	return c < 0x20 && c != '\t' || c == 0x7f
}

// key reads a possibly dotted key (a.b, "a b".c) and the spaces after it.
func (sc *tomlScanner) key() ([]string, error) {
	var parts []string
	for {
		sc.skipSpace()
		part, err := sc.keyPart()
		if err != nil {
			return nil, err
		}
		parts = append(parts, part)
		sc.skipSpace()
		if sc.peek() != '.' {
			return parts, nil
		}
		sc.i++
	}
}

func (sc *tomlScanner) keyPart() (string, error) {
	switch sc.peek() {
	case '"':
		return sc.basicString()
	case '\'':
		return sc.literalString()
	}
	start := sc.i
	for !sc.eof() && isBareKeyByte(sc.s[sc.i]) {
		sc.i++
	}
	if sc.i == start {
		return "", fmt.Errorf("expected a key, found %s", sc.found())
	}
	return sc.s[start:sc.i], nil
}

// value reads a string or a boolean. The message for anything else does
// not repeat it: an unquoted value may be a token.
func (sc *tomlScanner) value() (tomlValue, error) {
	rest := sc.s[sc.i:]
	switch {
	case strings.HasPrefix(rest, `"""`), strings.HasPrefix(rest, `'''`):
		return tomlValue{}, errors.New("multi-line strings are not supported")
	case strings.HasPrefix(rest, `"`):
		s, err := sc.basicString()
		return tomlValue{s: s}, err
	case strings.HasPrefix(rest, `'`):
		s, err := sc.literalString()
		return tomlValue{s: s}, err
	case strings.HasPrefix(rest, "["):
		return tomlValue{}, errors.New("arrays are not supported")
	case strings.HasPrefix(rest, "{"):
		return tomlValue{}, errors.New("inline tables are not supported")
	case rest == "" || rest[0] == '#':
		return tomlValue{}, errors.New("missing value after =")
	}
	n := strings.IndexAny(rest, " \t#")
	if n < 0 {
		n = len(rest)
	}
	switch rest[:n] {
	case "true":
		sc.i += n
		return tomlValue{b: true, isBool: true}, nil
	case "false":
		sc.i += n
		return tomlValue{isBool: true}, nil
	}
	return tomlValue{}, errors.New(`invalid value: strings need quotes ("..." or '...'), booleans are true or false`)
}

// literalString reads '...': no escapes, no control characters but tab.
func (sc *tomlScanner) literalString() (string, error) {
	sc.i++ // opening quote
	start := sc.i
	for !sc.eof() {
		c := sc.s[sc.i]
		switch {
		case c == '\'':
			sc.i++
			return sc.s[start : sc.i-1], nil
		case isControl(c):
			return "", fmt.Errorf("control character U+%04X in a string", c)
		}
		sc.i++
	}
	return "", errors.New("unterminated string (a string must end on the same line)")
}

// basicString reads "..." with the TOML 1.0 escapes.
func (sc *tomlScanner) basicString() (string, error) {
	sc.i++ // opening quote
	var b []byte
	for !sc.eof() {
		c := sc.s[sc.i]
		sc.i++
		switch {
		case c == '"':
			return string(b), nil
		case c == '\\':
			var err error
			if b, err = sc.escape(b); err != nil {
				return "", err
			}
		case isControl(c):
			return "", fmt.Errorf(`control character U+%04X in a string (write it as an escape such as \n)`, c)
		default:
			b = append(b, c)
		}
	}
	return "", errors.New("unterminated string (a string must end on the same line)")
}

// escape decodes the escape after a backslash and appends it to b.
func (sc *tomlScanner) escape(b []byte) ([]byte, error) {
	if sc.eof() {
		return nil, errors.New("unterminated string (a string must end on the same line)")
	}
	c := sc.s[sc.i]
	sc.i++
	switch c {
	case 'b':
		return append(b, '\b'), nil
	case 't':
		return append(b, '\t'), nil
	case 'n':
		return append(b, '\n'), nil
	case 'f':
		return append(b, '\f'), nil
	case 'r':
		return append(b, '\r'), nil
	case '"':
		return append(b, '"'), nil
	case '\\':
		return append(b, '\\'), nil
	case 'u':
		return sc.unicodeEscape(b, 4)
	case 'U':
		return sc.unicodeEscape(b, 8)
	}
	sc.i--
	return nil, fmt.Errorf("invalid escape: backslash followed by %s in a string", sc.found())
}

// unicodeEscape reads n hex digits naming a Unicode scalar value.
func (sc *tomlScanner) unicodeEscape(b []byte, n int) ([]byte, error) {
	if len(sc.s)-sc.i < n {
		return nil, fmt.Errorf(`\%c escape needs %d hex digits`, sc.s[sc.i-1], n)
	}
	var r rune
	for _, c := range []byte(sc.s[sc.i : sc.i+n]) {
		d, ok := hexDigit(c)
		if !ok {
			return nil, fmt.Errorf(`\%c escape needs %d hex digits`, sc.s[sc.i-1], n)
		}
		r = r<<4 | d
	}
	if r < 0 || !utf8.ValidRune(r) {
		return nil, fmt.Errorf(`escape \%c%s is not a Unicode scalar value`, sc.s[sc.i-1], sc.s[sc.i:sc.i+n])
	}
	sc.i += n
	return utf8.AppendRune(b, r), nil
}

func hexDigit(c byte) (rune, bool) {
	switch {
	case c >= '0' && c <= '9':
		return rune(c - '0'), true
	case c >= 'a' && c <= 'f':
		return rune(c-'a') + 10, true
	case c >= 'A' && c <= 'F':
		return rune(c-'A') + 10, true
	}
	return 0, false
}
