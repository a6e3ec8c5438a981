package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"log/slog"
	"net"
	"os"
	"strings"
	"syscall"
	"time"
)

// Running under systemd: readiness notifications, log lines for the
// journal, and the first-run token kept out of it.

// bootstrapTokenFile is where the first-run token goes instead of the log
// when the log is kept (the journal, which every member of adm reads, or a
// JSON log shipper).
const bootstrapTokenFile = "bootstrap-token"

// sdNotify sends one state ("READY=1", "RELOADING=1", "STOPPING=1") to
// systemd over $NOTIFY_SOCKET, as sd_notify(3) does; with no socket it does
// nothing. An "@" socket is in the abstract namespace, which Go's unix
// address handling already understands.
func sdNotify(socket, state string) error {
	if socket == "" {
		return nil
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: socket, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("notify systemd (%s): %w", state, err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("notify systemd (%s): %w", state, err)
	}
	return nil
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

// newLogger writes the daemon's log: "helyos: DATE TIME message" by default,
// one JSON object per line with --log-format json, and no time stamp under
// journald, which stamps every line itself.
func newLogger(format string, journal bool, w io.Writer) *log.Logger {
	if format == "json" {
		opts := &slog.HandlerOptions{}
		if journal {
			opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
				if a.Key == slog.TimeKey && len(groups) == 0 {
					return slog.Attr{}
				}
				return a
			}
		}
		return log.New(jsonLines{slog.NewJSONHandler(w, opts)}, "", 0)
	}
	if journal {
		return log.New(w, "helyos: ", 0)
	}
	return log.New(w, "helyos: ", log.LstdFlags)
}

// jsonLines turns each line the daemon logs into one JSON object: a line
// starting "error: ", "warning: " or "debug: " at that level, without the
// word, so a log shipper can alert on it; every other line at INFO.
type jsonLines struct{ h slog.Handler }

func (j jsonLines) Write(p []byte) (int, error) {
	msg, level := strings.TrimSuffix(string(p), "\n"), slog.LevelInfo
	if m, ok := strings.CutPrefix(msg, "error: "); ok {
		msg, level = m, slog.LevelError
	} else if m, ok := strings.CutPrefix(msg, "warning: "); ok {
		msg, level = m, slog.LevelWarn
	} else if m, ok := strings.CutPrefix(msg, "debug: "); ok {
		msg, level = m, slog.LevelDebug
	}
	return len(p), j.h.Handle(context.Background(), slog.NewRecord(time.Now(), level, msg, 0))
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
	_, err = f.WriteString(token + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
