// Package results writes the benchmarks' shared output: bench/results.json,
// a list of Entry, and bench/results.md, whose table lists every entry and
// whose sections (between HTML comment markers) each belong to one tool.
// Each tool replaces only its own entries and its own section, so the tools
// of `make bench` can run one after the other.
package results

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Entry is one measured figure of bench/results.json.
type Entry struct {
	Name     string  `json:"name"`
	Unit     string  `json:"unit"`
	Median   float64 `json:"median"`
	P99      float64 `json:"p99"`
	Baseline float64 `json:"baseline"`
	Ratio    float64 `json:"ratio"`
	Command  string  `json:"command"`
}

// The results table's markers in results.md.
const (
	tableBegin = "<!-- results-table:begin -->"
	tableEnd   = "<!-- results-table:end -->"
)

// Write replaces, in dir's results.json, the entries whose names owns
// accepts with entries (where the first of them stood, else at the end),
// regenerates results.md's table, and replaces (or appends) the section
// between sectionBegin and sectionEnd with section.
func Write(dir string, owns func(name string) bool, entries []Entry, sectionBegin, sectionEnd, section string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	jsonPath := filepath.Join(dir, "results.json")
	var existing []json.RawMessage
	if b, err := os.ReadFile(jsonPath); err == nil {
		if err := json.Unmarshal(b, &existing); err != nil {
			return fmt.Errorf("%s is not a JSON list: %w", jsonPath, err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	var merged []json.RawMessage
	inserted := false
	mine := func() error {
		for _, e := range entries {
			b, err := json.Marshal(e)
			if err != nil {
				return err
			}
			merged = append(merged, b)
		}
		inserted = true
		return nil
	}
	for _, raw := range existing {
		var head struct {
			Name string `json:"name"`
		}
		_ = json.Unmarshal(raw, &head)
		if owns(head.Name) {
			if !inserted {
				// Keep this tool's entries where they were.
				if err := mine(); err != nil {
					return err
				}
			}
			continue
		}
		merged = append(merged, raw)
	}
	if !inserted {
		if err := mine(); err != nil {
			return err
		}
	}
	out, err := json.MarshalIndent(merged, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(jsonPath, append(out, '\n'), 0o644); err != nil {
		return err
	}

	var all []map[string]any
	if err := json.Unmarshal(out, &all); err != nil {
		return err
	}
	mdPath := filepath.Join(dir, "results.md")
	old, err := os.ReadFile(mdPath)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	md := string(old)
	if !strings.Contains(md, tableBegin) || !strings.Contains(md, tableEnd) {
		md = "# Benchmark results\n\nWritten by `make bench`; " +
			"`ratio` is median / baseline, measured in the same run: lower is better for times and memory (ms, s, MiB), higher for throughput (MiB/s).\n\n" +
			tableBegin + "\n" + tableEnd + "\n"
	}
	md = replaceSection(md, tableBegin, tableEnd, table(all))
	md = replaceSection(md, sectionBegin, sectionEnd, section)
	return os.WriteFile(mdPath, []byte(md), 0o644)
}

// replaceSection replaces what lies between begin and end, appending the
// section when it is missing.
func replaceSection(doc, begin, end, body string) string {
	i, j := strings.Index(doc, begin), strings.Index(doc, end)
	if i < 0 || j < i {
		if !strings.HasSuffix(doc, "\n") {
			doc += "\n"
		}
		return doc + "\n" + begin + "\n" + body + end + "\n"
	}
	return doc[:i+len(begin)] + "\n" + body + doc[j:]
}

// table is the results table of every entry.
func table(all []map[string]any) string {
	var b bytes.Buffer
	b.WriteString("| name | unit | median | p99 | baseline | ratio | command |\n")
	b.WriteString("|---|---|---:|---:|---:|---:|---|\n")
	for _, e := range all {
		fmt.Fprintf(&b, "| %v | %v | %v | %v | %v | %v | `%v` |\n",
			e["name"], e["unit"], e["median"], e["p99"], e["baseline"], e["ratio"], e["command"])
	}
	return b.String()
}
