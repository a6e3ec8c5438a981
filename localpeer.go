package main

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// guardPlainHTTP makes a client that sends a token over plain HTTP check
// every connection before the request is written: while the daemon is
// down, another local user can listen on its port and wait for the token.
func (t *target) guardPlainHTTP(stderr io.Writer) {
	if strings.HasPrefix(t.server, "http://") && t.token != "" {
		tr := t.client.Transport.(*http.Transport)
		tr.DialContext = refuseForeignPeer(tr.DialContext, "/proc/net", stderr)
	}
}

type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// refuseForeignPeer wraps dial with checkPeer. Where the kernel's tables
// cannot be read (no /proc: macOS) it warns once and goes on.
func refuseForeignPeer(dial dialFunc, procNet string, stderr io.Writer) dialFunc {
	var once sync.Once
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if err := checkPeer(conn, procNet); errors.Is(err, os.ErrNotExist) {
			once.Do(func() {
				fmt.Fprintf(stderr, "helyos: warning: cannot check who listens at %s (no %s here); sending the token over plain HTTP unchecked\n", addr, procNet)
			})
		} else if err != nil {
			conn.Close()
			return nil, err
		}
		return conn, nil
	}
}

// checkPeer finds the other end of conn in the kernel's TCP tables
// (procNet/tcp, tcp6) and refuses it when it is a local socket owned by
// neither the caller nor root. A socket accepted by a listener carries the
// listener's owner, so this names who listens, and it is checked on the
// connection the token will take: no gap between check and use. A loopback
// peer that is not in the tables is refused too.
func checkPeer(conn net.Conn, procNet string) error {
	local, remote := conn.LocalAddr().(*net.TCPAddr), conn.RemoteAddr().(*net.TCPAddr)
	hint := fmt.Sprintf("see who holds the port (ss -ltnpe 'sport = :%d'), stop it, and start the daemon", remote.Port)
	for _, table := range []string{"tcp", "tcp6"} {
		data, err := os.ReadFile(filepath.Join(procNet, table))
		if table == "tcp6" && errors.Is(err, os.ErrNotExist) {
			break // a kernel without IPv6
		}
		if err != nil {
			return err
		}
		for _, line := range strings.Split(string(data), "\n") {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid ...
			f := strings.Fields(line)
			if len(f) < 8 || !procAddrIs(f[1], remote) || !procAddrIs(f[2], local) {
				continue
			}
			if uid, err := strconv.Atoi(f[7]); err != nil || (uid != 0 && uid != os.Getuid()) {
				return withHint(fmt.Errorf("refusing to send the token to %s: the listener on port %d belongs to uid %s, not to you (uid %d) or root; another user may be posing as the daemon",
					remote, remote.Port, f[7], os.Getuid()), hint)
			}
			return nil
		}
	}
	if remote.IP.IsLoopback() {
		return withHint(fmt.Errorf("refusing to send the token to %s: its listener is not in %s", remote, procNet), hint)
	}
	return nil // a daemon on another machine
}

// procAddrIs reports whether s, an address as /proc/net/tcp prints it (the
// IP as 32-bit words in host byte order, in hex, then ":" and the port in
// hex), is a. IPv4 matches its IPv4-mapped IPv6 form too.
func procAddrIs(s string, a *net.TCPAddr) bool {
	h, p, _ := strings.Cut(s, ":")
	ip, err := hex.DecodeString(h)
	port, perr := strconv.ParseUint(p, 16, 16)
	if err != nil || perr != nil || len(ip)%4 != 0 {
		return false
	}
	for i := 0; i < len(ip); i += 4 {
		binary.NativeEndian.PutUint32(ip[i:], binary.BigEndian.Uint32(ip[i:]))
	}
	return int(port) == a.Port && net.IP(ip).Equal(a.IP)
}
