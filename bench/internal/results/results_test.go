package results

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
)

func TestWriteKeepsOtherToolsEntriesAndSections(t *testing.T) {
	g := NewWithT(t)
	dir := t.TempDir()
	prefix := func(p string) func(string) bool { return func(n string) bool { return strings.HasPrefix(n, p) } }
	g.Expect(Write(dir, prefix("a/"), []Entry{{Name: "a/x", Median: 1}}, "<!-- a:begin -->", "<!-- a:end -->", "A1\n")).To(Succeed())
	g.Expect(Write(dir, prefix("b/"), []Entry{{Name: "b/y", Median: 2}}, "<!-- b:begin -->", "<!-- b:end -->", "B1\n")).To(Succeed())
	g.Expect(Write(dir, prefix("a/"), []Entry{{Name: "a/x", Median: 3}, {Name: "a/z"}}, "<!-- a:begin -->", "<!-- a:end -->", "A2\n")).To(Succeed())

	b, err := os.ReadFile(filepath.Join(dir, "results.json"))
	g.Expect(err).NotTo(HaveOccurred())
	var got []Entry
	g.Expect(json.Unmarshal(b, &got)).To(Succeed())
	g.Expect(got).To(Equal([]Entry{{Name: "a/x", Median: 3}, {Name: "a/z"}, {Name: "b/y", Median: 2}}), "a's entries replaced in place, b's kept")
	md, err := os.ReadFile(filepath.Join(dir, "results.md"))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(string(md)).To(And(ContainSubstring("| a/z |"), ContainSubstring("<!-- a:begin -->\nA2\n<!-- a:end -->"),
		ContainSubstring("<!-- b:begin -->\nB1\n<!-- b:end -->")))
	g.Expect(string(md)).NotTo(ContainSubstring("A1"))
}
