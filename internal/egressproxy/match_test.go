package egressproxy

import (
	"testing"

	. "github.com/onsi/gomega"
)

func TestPlaceholdersMatchTheLongestAtEachPosition(t *testing.T) {
	p := &Proxy{Secrets: []Secret{
		{Name: "API", Placeholder: "$SANDBOX_SECRET_API", Value: []byte("short"), Headers: true},
		{Name: "API_KEY", Placeholder: "$SANDBOX_SECRET_API_KEY", Value: []byte("long"), Headers: true},
	}}
	s := &session{p: p, order: []int{1, 0}}
	for _, tc := range []struct {
		name, in, out string
		found         []string
	}{
		{name: "the longer placeholder wins", in: "x $SANDBOX_SECRET_API_KEY y", out: "x long y", found: []string{"API_KEY"}},
		{name: "the shorter alone", in: "$SANDBOX_SECRET_API/", out: "short/", found: []string{"API"}},
		{name: "both, adjacent", in: "$SANDBOX_SECRET_API$SANDBOX_SECRET_API_KEY", out: "shortlong", found: []string{"API", "API_KEY"}},
		{name: "none", in: "$SANDBOX_SECRET_AP", out: "$SANDBOX_SECRET_AP"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			var found []string
			s.each(tc.in, func(i, _ int) { found = append(found, p.Secrets[i].Name) })
			g.Expect(found).To(Equal(tc.found))
			g.Expect(s.replace(tc.in, func(*Secret) bool { return true })).To(Equal(tc.out))
		})
	}
}

func TestHostMatches(t *testing.T) {
	for _, tc := range []struct {
		patterns []string
		host     string
		matches  bool
	}{
		{patterns: []string{"api.test"}, host: "api.test", matches: true},
		{patterns: []string{"API.test."}, host: "api.test", matches: true},
		{patterns: []string{"api.test"}, host: "x.api.test"},
		{patterns: []string{"*.api.test"}, host: "x.api.test", matches: true},
		{patterns: []string{"*.api.test"}, host: "x.y.api.test", matches: true},
		{patterns: []string{"*.api.test"}, host: "api.test"},
		{patterns: []string{"*.api.test"}, host: "evilapi.test"},
		{patterns: []string{"api.test"}, host: ""},
	} {
		t.Run(tc.host+" against "+tc.patterns[0], func(t *testing.T) {
			g := NewWithT(t)
			g.Expect(hostMatches(tc.patterns, tc.host)).To(Equal(tc.matches))
		})
	}
}
