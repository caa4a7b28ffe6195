// Command nettool is the e2e test image's network client: static (no
// cgo), so that it resolves names with Go's own resolver through the
// guest's /etc/resolv.conf — busybox-static's wget and nc crash on
// glibc's NSS in an image without glibc.
//
//	nettool get URL ["Name: value"...]  prints the body; exit 1 with the error on stderr
//	nettool lookup NAME                  prints the addresses, one per line
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, `usage: nettool get URL ["Name: value"...] | nettool lookup NAME`)
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var err error
	switch os.Args[1] {
	case "get":
		err = get(ctx, os.Args[2], os.Args[3:])
	case "lookup":
		var addrs []string
		addrs, err = net.DefaultResolver.LookupHost(ctx, os.Args[2])
		for _, a := range addrs {
			fmt.Println(a)
		}
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "nettool:", err)
		os.Exit(1)
	}
}

func get(ctx context.Context, url string, headers []string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	for _, h := range headers {
		name, value, ok := strings.Cut(h, ":")
		if !ok {
			return fmt.Errorf("header %q is not Name: value", h)
		}
		req.Header.Add(strings.TrimSpace(name), strings.TrimSpace(value))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("%s: %s", resp.Status, b)
	}
	_, err = io.Copy(os.Stdout, resp.Body)
	return err
}
