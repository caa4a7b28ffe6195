package initd

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// maxHostname is the kernel's limit (HOST_NAME_MAX).
const maxHostname = 64

// validHostname checks h as an RFC 1123 host name: labels of letters,
// digits and '-', separated by dots, at most 64 bytes in all.
func validHostname(h string) error {
	if h == "" || len(h) > maxHostname {
		return fmt.Errorf("hostname %q: must be 1 to %d characters", h, maxHostname)
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("hostname %q: empty label or label starting or ending with '-'", h)
		}
		for _, c := range label {
			if !hostnameChar(c) {
				return fmt.Errorf("hostname %q: invalid character %q", h, c)
			}
		}
	}
	return nil
}

// hostnameChar reports whether c may appear in a host name label.
func hostnameChar(c rune) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-'
}

// defaultHosts is /etc/hosts for an image that has none; %s is the host
// name.
const defaultHosts = "127.0.0.1\tlocalhost %s\n::1\tlocalhost ip6-localhost ip6-loopback\n"

// WriteHostnameFiles makes the guest root agree with the host name h:
// /etc/hostname holds it, and /etc/hosts resolves it to 127.0.0.1 (a new
// file when the image has none, else a line appended unless one already
// names it), since many programs look their own name up and stall or fail
// when it does not resolve. The kernel's name is set apart (sethostname).
func WriteHostnameFiles(root, h string) error {
	if err := validHostname(h); err != nil {
		return err
	}
	if _, err := mkdirAllInRoot(root, "/etc", defaultDirMode); err != nil {
		return err
	}
	name, err := resolveInRoot(root, "/etc/hostname", false)
	if err != nil {
		return err
	}
	if err := replaceFile(name, []byte(h+"\n"), defaultFileMode); err != nil {
		return fmt.Errorf("writing /etc/hostname: %w", err)
	}
	hosts, err := resolveInRoot(root, "/etc/hosts", true)
	if err != nil {
		return err
	}
	b, err := os.ReadFile(hosts)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		b = fmt.Appendf(nil, defaultHosts, h)
	case err != nil:
		return fmt.Errorf("reading /etc/hosts: %w", err)
	case hostsNames(b, h):
		return nil
	default:
		if len(b) > 0 && !bytes.HasSuffix(b, []byte("\n")) {
			b = append(b, '\n')
		}
		b = fmt.Appendf(b, "127.0.0.1\t%s\n", h)
	}
	if err := replaceFile(hosts, b, defaultFileMode); err != nil {
		return fmt.Errorf("writing /etc/hosts: %w", err)
	}
	return nil
}

// hostsNames reports whether an /etc/hosts line already maps h.
func hostsNames(hosts []byte, h string) bool {
	for _, line := range strings.Split(string(hosts), "\n") {
		line, _, _ = strings.Cut(line, "#")
		f := strings.Fields(line)
		for i := 1; i < len(f); i++ {
			if strings.EqualFold(f[i], h) {
				return true
			}
		}
	}
	return false
}
