package initd

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strconv"
	"strings"
)

// Credential is who a process runs as, resolved in the guest's root.
type Credential struct {
	// UID and GID are the user and primary group ids.
	UID, GID uint32
	// Groups are the supplementary groups (the primary one included).
	Groups []uint32
	// Home is the user's home directory from /etc/passwd ("/" when the
	// user has no entry), the HOME a process gets when its environment has
	// none.
	Home string
}

// passwdEntry is one line of /etc/passwd.
type passwdEntry struct {
	name     string
	uid, gid uint32
	home     string
}

// groupEntry is one line of /etc/group.
type groupEntry struct {
	name    string
	gid     uint32
	members []string
}

// ResolveUser resolves spec, the Start's User (USER[:GROUP] or UID[:GID],
// "" for root), against root's /etc/passwd and /etc/group, the way OCI
// runtimes do:
//
//   - a name must exist in the file (an unknown name fails clearly);
//   - a number may be absent from the file (images often run as an id that
//     has no entry); an absent user's primary group is 0 and its home "/";
//   - without GROUP, the supplementary groups are the primary group plus
//     every /etc/group entry listing the user's name; with GROUP, that
//     group alone.
func ResolveUser(root, spec string) (Credential, error) {
	userPart, groupPart, hasGroup := strings.Cut(spec, ":")
	if userPart == "" {
		userPart = "0"
	}
	if hasGroup && groupPart == "" {
		return Credential{}, fmt.Errorf("user %q: empty group", spec)
	}
	users, err := readPasswd(root)
	if err != nil {
		return Credential{}, fmt.Errorf("user %q: %w", spec, err)
	}
	cred := Credential{Home: "/"}
	var name string
	if id, ok := parseID(userPart); ok {
		cred.UID = id
		if i := slices.IndexFunc(users, func(u passwdEntry) bool { return u.uid == id }); i >= 0 {
			name, cred.GID, cred.Home = users[i].name, users[i].gid, users[i].home
		}
	} else {
		i := slices.IndexFunc(users, func(u passwdEntry) bool { return u.name == userPart })
		if i < 0 {
			return Credential{}, fmt.Errorf("user %q: no user %q in the image's /etc/passwd", spec, userPart)
		}
		name, cred.UID, cred.GID, cred.Home = users[i].name, users[i].uid, users[i].gid, users[i].home
	}
	if cred.Home == "" {
		cred.Home = "/"
	}
	groups, err := readGroup(root)
	if err != nil {
		return Credential{}, fmt.Errorf("user %q: %w", spec, err)
	}
	if hasGroup {
		if id, ok := parseID(groupPart); ok {
			cred.GID = id
		} else {
			i := slices.IndexFunc(groups, func(g groupEntry) bool { return g.name == groupPart })
			if i < 0 {
				return Credential{}, fmt.Errorf("user %q: no group %q in the image's /etc/group", spec, groupPart)
			}
			cred.GID = groups[i].gid
		}
		cred.Groups = []uint32{cred.GID}
		return cred, nil
	}
	cred.Groups = []uint32{cred.GID}
	if name != "" {
		for _, g := range groups {
			if slices.Contains(g.members, name) && !slices.Contains(cred.Groups, g.gid) {
				cred.Groups = append(cred.Groups, g.gid)
			}
		}
	}
	return cred, nil
}

// parseID parses a numeric user or group id.
func parseID(s string) (uint32, bool) {
	n, err := strconv.ParseUint(s, 10, 32)
	return uint32(n), err == nil
}

// readDBFile reads /etc/<name> in root, following symlinks inside root;
// a missing file reads as empty (minimal images have none).
func readDBFile(root, name string) ([][]string, error) {
	p, err := resolveInRoot(root, "/etc/"+name, true)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading /etc/%s: %w", name, err)
	}
	var out [][]string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		out = append(out, strings.Split(line, ":"))
	}
	return out, sc.Err()
}

// readPasswd parses root's /etc/passwd (name:x:uid:gid:gecos:home:shell),
// skipping malformed lines as libc does.
func readPasswd(root string) ([]passwdEntry, error) {
	lines, err := readDBFile(root, "passwd")
	if err != nil {
		return nil, err
	}
	var out []passwdEntry
	for _, f := range lines {
		if len(f) < 4 {
			continue
		}
		uid, ok1 := parseID(f[2])
		gid, ok2 := parseID(f[3])
		if !ok1 || !ok2 || f[0] == "" {
			continue
		}
		e := passwdEntry{name: f[0], uid: uid, gid: gid}
		if len(f) > 5 {
			e.home = f[5]
		}
		out = append(out, e)
	}
	return out, nil
}

// readGroup parses root's /etc/group (name:x:gid:member,member).
func readGroup(root string) ([]groupEntry, error) {
	lines, err := readDBFile(root, "group")
	if err != nil {
		return nil, err
	}
	var out []groupEntry
	for _, f := range lines {
		if len(f) < 3 {
			continue
		}
		gid, ok := parseID(f[2])
		if !ok || f[0] == "" {
			continue
		}
		e := groupEntry{name: f[0], gid: gid}
		if len(f) > 3 && f[3] != "" {
			for _, m := range strings.Split(f[3], ",") {
				if m = strings.TrimSpace(m); m != "" {
					e.members = append(e.members, m)
				}
			}
		}
		out = append(out, e)
	}
	return out, nil
}

// withHome returns env with HOME=home appended unless env sets HOME.
func withHome(env []string, home string) []string {
	for _, kv := range env {
		if strings.HasPrefix(kv, "HOME=") {
			return env
		}
	}
	return append(slices.Clone(env), "HOME="+home)
}
