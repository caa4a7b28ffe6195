//go:build !amd64

package vmm

import "errors"

func measureTSCkHz() (int, error) {
	return 0, errors.New("measuring the TSC needs amd64")
}
