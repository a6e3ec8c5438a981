package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"unicode/utf16"
	"unsafe"
)

// termios reads f's terminal settings into t, or with set writes them from
// t. The ioctl requests are the one per-OS detail of the client, kept here
// as values rather than in per-OS files.
func termios(f *os.File, set bool, t *syscall.Termios) error {
	var req, put uintptr // the request that reads, and the one that writes
	switch runtime.GOOS {
	case "linux":
		req, put = 0x5401, 0x5402 // TCGETS, TCSETS
	case "darwin":
		req, put = 0x40487413, 0x80487414 // TIOCGETA, TIOCSETA
	default:
		return errors.New("terminals are not supported on " + runtime.GOOS)
	}
	if set {
		req = put
	}
	if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), req, uintptr(unsafe.Pointer(t))); errno != 0 {
		return errno
	}
	return nil
}

// isTerminal reports whether f is a terminal (not merely a character
// device: /dev/null is one of those too).
func isTerminal(f *os.File) bool {
	var t syscall.Termios
	return f != nil && termios(f, false, &t) == nil
}

// readLine reads one line from r a byte at a time, so nothing after the
// newline is consumed, and returns it without the line ending.
func readLine(r io.Reader) (string, error) {
	var line []byte
	buf := make([]byte, 1)
	for len(line) < 64<<10 {
		n, err := r.Read(buf)
		newline := n == 1 && buf[0] == '\n'
		if n == 1 && !newline {
			line = append(line, buf[0])
		}
		if newline || err == io.EOF && len(line) > 0 {
			return strings.TrimSuffix(string(line), "\r"), nil
		}
		if err != nil {
			return "", err
		}
	}
	return "", errors.New("line longer than 64 KiB")
}

// promptYesNo asks question on the terminal; only "y" or "yes" is a yes.
func promptYesNo(in *os.File, out io.Writer, question string) (bool, error) {
	fmt.Fprintf(out, "%s [y/N] ", question)
	answer, err := readLine(in)
	if err != nil && err != io.EOF {
		return false, fmt.Errorf("read answer: %w", err)
	}
	answer = strings.ToLower(strings.TrimSpace(answer))
	return answer == "y" || answer == "yes", nil
}

// promptSecret reads a line from the terminal without echoing it.
func promptSecret(in *os.File, out io.Writer, prompt string) (string, error) {
	var saved syscall.Termios
	if err := termios(in, false, &saved); err != nil {
		return "", fmt.Errorf("read terminal settings: %w", err)
	}
	quiet := saved
	quiet.Lflag &^= syscall.ECHO
	if err := termios(in, true, &quiet); err != nil {
		return "", fmt.Errorf("turn off echo: %w", err)
	}
	defer termios(in, true, &saved)
	// A Ctrl-C (or a hang-up) at the prompt must not leave the terminal
	// without echo: restore it, then die of the signal as before.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	done := make(chan struct{})
	defer func() { signal.Stop(sigs); close(done) }()
	go func() {
		select {
		case sig := <-sigs:
			termios(in, true, &saved)
			fmt.Fprintln(out)
			signal.Reset(sig)
			syscall.Kill(os.Getpid(), sig.(syscall.Signal))
		case <-done:
		}
	}()
	fmt.Fprint(out, prompt)
	line, err := readLine(in)
	fmt.Fprintln(out)
	if err != nil {
		return "", fmt.Errorf("read from terminal: %w", err)
	}
	return strings.TrimSpace(line), nil
}

// sanitize escapes what a terminal would act on in text a server sent:
// control characters (ESC, CR, BS, the C1 range) and invisible format
// characters (bidi overrides), as JSON \u escapes, so that a line of JSON
// stays valid JSON. Printable text in any script stays as it is.
func sanitize(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case strconv.IsPrint(r):
			b.WriteRune(r)
		default: // above U+FFFF as a UTF-16 surrogate pair, as JSON has it
			for _, u := range utf16.Encode([]rune{r}) {
				fmt.Fprintf(&b, `\u%04x`, u)
			}
		}
	}
	return b.String()
}
