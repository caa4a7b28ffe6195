package initd

import (
	"testing"

	. "github.com/onsi/gomega"
)

// etcRoot is a root with the given /etc/passwd and /etc/group (nil: none).
func etcRoot(t *testing.T, passwd, group *string) string {
	t.Helper()
	files := map[string]string{"etc/": ""}
	if passwd != nil {
		files["etc/passwd"] = *passwd
	}
	if group != nil {
		files["etc/group"] = *group
	}
	return tree(t, files)
}

func TestResolveUser(t *testing.T) {
	passwd := `root:x:0:0:root:/root:/bin/sh
# a comment
daemon:x:1:1::/usr/sbin:/usr/sbin/nologin
app:x:1000:1000::/home/app:/bin/sh
broken line
nohome:x:1001:1001
`
	group := `root:x:0:
wheel:x:10:root, app
app:x:1000:
docker:x:999:app,daemon
staff:x:50:
`
	for _, tc := range []struct {
		name          string
		passwd, group *string
		spec          string
		want          Credential
		wantErr       string
	}{
		{name: "empty is root", spec: "", want: Credential{UID: 0, GID: 0, Groups: []uint32{0, 10}, Home: "/root"}},
		{name: "a name, with the groups listing it", spec: "app", want: Credential{UID: 1000, GID: 1000, Groups: []uint32{1000, 10, 999}, Home: "/home/app"}},
		{name: "a uid in passwd is that user", spec: "1000", want: Credential{UID: 1000, GID: 1000, Groups: []uint32{1000, 10, 999}, Home: "/home/app"}},
		{name: "a uid absent from passwd: group 0, home /", spec: "4242", want: Credential{UID: 4242, GID: 0, Groups: []uint32{0}, Home: "/"}},
		{name: "name:group, that group alone", spec: "app:staff", want: Credential{UID: 1000, GID: 50, Groups: []uint32{50}, Home: "/home/app"}},
		{name: "uid:gid, both absent", spec: "4242:4343", want: Credential{UID: 4242, GID: 4343, Groups: []uint32{4343}, Home: "/"}},
		{name: "name:gid", spec: "daemon:4343", want: Credential{UID: 1, GID: 4343, Groups: []uint32{4343}, Home: "/usr/sbin"}},
		{name: "a passwd entry without a home field", spec: "nohome", want: Credential{UID: 1001, GID: 1001, Groups: []uint32{1001}, Home: "/"}},
		{name: "an unknown name fails", spec: "nobody", wantErr: `no user "nobody" in the image's /etc/passwd`},
		{name: "an unknown group fails", spec: "app:nogroup", wantErr: `no group "nogroup" in the image's /etc/group`},
		{name: "an empty group fails", spec: "app:", wantErr: "empty group"},
		{name: "a name in an image without passwd fails", passwd: ptr(""), spec: "app", wantErr: "no user"},
		{name: "a uid in an image without passwd or group", passwd: ptr(""), group: ptr(""), spec: "1000:1000",
			want: Credential{UID: 1000, GID: 1000, Groups: []uint32{1000}, Home: "/"}},
		{name: "root in an image without passwd", passwd: ptr(""), group: ptr(""), spec: "",
			want: Credential{UID: 0, GID: 0, Groups: []uint32{0}, Home: "/"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			p, gr := &passwd, &group
			if tc.passwd != nil {
				p = nil
				if *tc.passwd != "" {
					p = tc.passwd
				}
			}
			if tc.group != nil {
				gr = nil
				if *tc.group != "" {
					gr = tc.group
				}
			}
			got, err := ResolveUser(etcRoot(t, p, gr), tc.spec)
			if tc.wantErr != "" {
				g.Expect(err).To(MatchError(ContainSubstring(tc.wantErr)))
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got).To(Equal(tc.want))
		})
	}
}

func TestResolveUserFollowsSymlinksInsideTheRoot(t *testing.T) {
	g := NewWithT(t)
	// Some images keep their databases elsewhere and link them.
	root := tree(t, map[string]string{
		"usr/share/base/passwd": "svc:x:77:77::/srv:/bin/sh\n",
		"etc/passwd":            "->/usr/share/base/passwd",
	})
	got, err := ResolveUser(root, "svc")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(got).To(Equal(Credential{UID: 77, GID: 77, Groups: []uint32{77}, Home: "/srv"}))
}

func TestWithHome(t *testing.T) {
	g := NewWithT(t)
	g.Expect(withHome([]string{"A=1"}, "/home/app")).To(Equal([]string{"A=1", "HOME=/home/app"}))
	g.Expect(withHome([]string{"HOME=/custom"}, "/home/app")).To(Equal([]string{"HOME=/custom"}))
	g.Expect(withHome(nil, "/")).To(Equal([]string{"HOME=/"}))
}
