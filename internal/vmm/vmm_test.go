package vmm

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
)

func TestQEMUArgs(t *testing.T) {
	base := Config{Kernel: "/k/vmlinux", Initrd: "/k/initrd.cpio", RunDir: "/run/vm/1"}
	const tcgCmdline = "console=ttyS0 quiet panic=-1 pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd " +
		"8250.nr_uarts=1 cryptomgr.notests random.trust_cpu=on agent.port=agent0 tsc_early_khz=2095900"
	common := func(mem, cpus, cmdline string, extra ...string) []string {
		out := []string{"-m", mem, "-smp", cpus,
			"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
			"-serial", "file:/run/vm/1/console.log",
			"-qmp", "unix:/run/vm/1/qmp.sock,server=on,wait=off",
			"-kernel", "/k/vmlinux", "-initrd", "/k/initrd.cpio",
			"-chardev", "socket,id=agent,path=/run/vm/1/agent.sock,server=on,wait=off",
			"-device", "virtio-serial-device",
			"-device", "virtserialport,chardev=agent,name=agent0",
			"-global", "virtio-mmio.force-legacy=false"}
		out = append(out, extra...)
		return append(out, "-append", cmdline)
	}
	machine := []string{"-M", "microvm,x-option-roms=off,isa-serial=on,rtc=on"}
	for _, tc := range []struct {
		name string
		cfg  func(Config) Config
		want []string
	}{
		{
			name: "TCG, the report's optimized microVM, with tsc_early_khz",
			cfg: func(c Config) Config {
				c.Accel, c.TSCkHz, c.CPUs, c.MemoryMiB = AccelTCG, 2095900, 1, 128
				return c
			},
			want: append(append(machine, "-accel", "tcg,thread=multi", "-cpu", "max"), common("128", "1", tcgCmdline)...),
		},
		{
			name: "KVM by default, 1 vCPU and 128 MiB, no tsc_early_khz",
			cfg:  func(c Config) Config { return c },
			want: append(append(machine, "-accel", "kvm", "-cpu", "host"),
				common("128", "1", strings.Replace(tcgCmdline, " tsc_early_khz=2095900", "", 1))...),
		},
		{
			name: "a read-only root disk, a port name, extra kernel args and commas escaped",
			cfg: func(c Config) Config {
				c.CPUs, c.MemoryMiB, c.AgentPort, c.RootDisk = 2, 512, "ctl", "/img/a,b.ext4"
				c.Disks = []Disk{{Path: "/run/vm/1/upper.ext4", Serial: "upper"}, {Path: "/v.img", Serial: "vol-0", ReadOnly: true}}
				c.KernelArgs = []string{"sandbox.root=/dev/vda"}
				return c
			},
			want: func() []string {
				w := append(append(machine, "-accel", "kvm", "-cpu", "host"),
					common("512", "2", strings.NewReplacer(" tsc_early_khz=2095900", "", "agent0", "ctl").Replace(tcgCmdline)+" sandbox.root=/dev/vda",
						"-drive", "id=root,file=/img/a,,b.ext4,format=raw,if=none,readonly=on",
						"-device", "virtio-blk-device,drive=root,serial=root",
						"-drive", "id=d0,file=/run/vm/1/upper.ext4,format=raw,if=none",
						"-device", "virtio-blk-device,drive=d0,serial=upper",
						"-drive", "id=d1,file=/v.img,format=raw,if=none,readonly=on",
						"-device", "virtio-blk-device,drive=d1,serial=vol-0")...)
				for i, a := range w {
					w[i] = strings.Replace(a, "name=agent0", "name=ctl", 1)
				}
				return w
			}(),
		},
		{
			name: "a NIC: a stream netdev on which QEMU listens, and a virtio-net device with the MAC",
			cfg: func(c Config) Config {
				c.RunDir = "/run/vm,1"
				c.Network = &NetworkDevice{MAC: "52:54:00:12:34:56"}
				return c
			},
			want: func() []string {
				w := append(append(machine, "-accel", "kvm", "-cpu", "host"),
					common("128", "1", strings.Replace(tcgCmdline, " tsc_early_khz=2095900", "", 1),
						"-netdev", "stream,id=net0,server=on,addr.type=unix,addr.path=/run/vm,,1/net.sock",
						"-device", "virtio-net-device,netdev=net0,mac=52:54:00:12:34:56")...)
				for i, a := range w {
					w[i] = strings.ReplaceAll(a, "/run/vm/1/", "/run/vm,,1/")
				}
				return w
			}(),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			NewWithT(t).Expect(QEMUArgs(tc.cfg(base))).To(Equal(tc.want))
		})
	}
}

func TestConfigValidation(t *testing.T) {
	ok := Config{Kernel: "k", Initrd: "i", RunDir: "/r", Accel: AccelTCG, TSCkHz: 1}
	for _, tc := range []struct {
		name    string
		mod     func(*Config)
		wantErr string
	}{
		{name: "a complete TCG config is valid", mod: func(*Config) {}},
		{name: "TCG without a TSC rate", mod: func(c *Config) { c.TSCkHz = 0 }, wantErr: "TSCkHz"},
		{name: "no kernel", mod: func(c *Config) { c.Kernel = "" }, wantErr: "kernel is required"},
		{name: "an unknown accelerator", mod: func(c *Config) { c.Accel = "hvf" }, wantErr: "unknown accelerator"},
		{name: "too little memory", mod: func(c *Config) { c.MemoryMiB = 8 }, wantErr: "16 MiB"},
		{name: "a disk without a serial", mod: func(c *Config) { c.Disks = []Disk{{Path: "/d"}} }, wantErr: "unique serial"},
		{name: "a disk serial longer than virtio-blk's 20 bytes", mod: func(c *Config) { c.Disks = []Disk{{Path: "/d", Serial: strings.Repeat("s", 21)}} }, wantErr: "unique serial"},
		{name: "a disk named like the root disk", mod: func(c *Config) { c.RootDisk = "/r"; c.Disks = []Disk{{Path: "/d", Serial: RootDiskSerial}} }, wantErr: "unique serial"},
		{name: "two disks with one serial", mod: func(c *Config) { c.Disks = []Disk{{Path: "/d", Serial: "a"}, {Path: "/e", Serial: "a"}} }, wantErr: "unique serial"},
		{name: "a NIC with a MAC", mod: func(c *Config) { c.Network = &NetworkDevice{MAC: "52:54:00:aB:cd:ef"} }},
		{name: "a NIC without a MAC", mod: func(c *Config) { c.Network = &NetworkDevice{} }, wantErr: "six colon-separated"},
		{name: "a NIC with a dash-separated MAC", mod: func(c *Config) { c.Network = &NetworkDevice{MAC: "52-54-00-12-34-56"} }, wantErr: "six colon-separated"},
		{name: "a NIC with an EUI-64", mod: func(c *Config) { c.Network = &NetworkDevice{MAC: "02:00:5e:10:00:00:00:01"} }, wantErr: "six colon-separated"},
		{name: "a NIC with a multicast MAC", mod: func(c *Config) { c.Network = &NetworkDevice{MAC: "01:00:5e:00:00:01"} }, wantErr: "multicast"},
		{name: "a run dir too long for sockets", mod: func(c *Config) { c.RunDir = "/" + strings.Repeat("x", 100) }, wantErr: "too long"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			c := ok
			tc.mod(&c)
			err := c.withDefaults().validate()
			if tc.wantErr == "" {
				g.Expect(err).NotTo(HaveOccurred())
			} else {
				g.Expect(err).To(MatchError(ContainSubstring(tc.wantErr)))
			}
		})
	}
}

func TestParseStatStartTime(t *testing.T) {
	g := NewWithT(t)
	// A command name with spaces and a ')' must not shift the fields.
	stat := "4242 (qemu) x (y)) S 1 4242 4242 0 -1 4194560 2107 0 0 0 12 7 0 0 20 0 3 0 987654 1 2 3\n"
	st, err := parseStatStartTime([]byte(stat))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(st).To(Equal(uint64(987654)))
	_, err = parseStatStartTime([]byte("1 (x) S 1"))
	g.Expect(err).To(HaveOccurred())

	self, err := ProcessStartTime("/proc", os.Getpid())
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(Process{PID: os.Getpid(), StartTime: self}.Alive()).To(BeTrue())
	g.Expect(Process{PID: os.Getpid(), StartTime: self + 1}.Alive()).To(BeFalse(), "a recycled pid is not the same process")

	file := filepath.Join(t.TempDir(), ProcessFile)
	g.Expect(WriteProcess(file, Process{PID: 7, StartTime: 9})).To(Succeed())
	g.Expect(ReadProcess(file)).To(Equal(Process{PID: 7, StartTime: 9}))
}

func TestHostTSCkHz(t *testing.T) {
	g := NewWithT(t)
	khz, err := HostTSCkHz()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(khz).To(BeNumerically(">", 100_000), "a TSC runs at more than 100 MHz")
	g.Expect(khz % 100).To(BeZero())

	f := filepath.Join(t.TempDir(), "tsc_freq_khz")
	g.Expect(os.WriteFile(f, []byte("2095906\n"), 0o644)).To(Succeed())
	g.Expect(readTSCkHz(f)).To(Equal(2095906))
	g.Expect(os.WriteFile(f, []byte("0\n"), 0o644)).To(Succeed())
	_, err = readTSCkHz(f)
	g.Expect(err).To(HaveOccurred())
}

// fakeQMP serves QMP on a unix socket: the greeting, then one scripted
// answer per command; it records the commands it received.
func fakeQMP(t *testing.T, answers map[string]string) (path string, got chan map[string]any) {
	t.Helper()
	dir, err := os.MkdirTemp("", "qmp")
	if err != nil {
		t.Fatal(err)
	}
	path = filepath.Join(dir, "qmp.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	got = make(chan map[string]any, 16)
	served := make(chan struct{})
	go func() {
		defer close(served)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer func() { _ = c.Close() }()
		_, _ = c.Write([]byte(`{"QMP": {"version": {"qemu": {"major": 7, "minor": 2}}, "capabilities": []}}` + "\n"))
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			var req map[string]any
			if json.Unmarshal(sc.Bytes(), &req) != nil {
				return
			}
			got <- req
			cmd, _ := req["execute"].(string)
			if cmd == "quit" {
				return // QEMU may close before answering
			}
			answer, ok := answers[cmd]
			if !ok {
				answer = `{"return": {}}`
			}
			// An event before the answer must be skipped by the client.
			_, _ = c.Write([]byte(`{"event": "RTC_CHANGE", "data": {"offset": 0}}` + "\n" + answer + "\n"))
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-served
		_ = os.RemoveAll(dir)
	})
	return path, got
}

func TestQMP(t *testing.T) {
	g := NewWithT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	path, got := fakeQMP(t, map[string]string{
		"query-status": `{"return": {"status": "running", "singlestep": false, "running": true}}`,
		"bogus":        `{"error": {"class": "CommandNotFound", "desc": "The command bogus has not been found"}}`,
	})

	q, err := DialQMP(ctx, path)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(<-got).To(Equal(map[string]any{"execute": "qmp_capabilities"}))

	st, err := q.QueryStatus(ctx)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(st).To(Equal(Status{Status: "running", Running: true}))
	g.Expect(<-got).To(HaveKeyWithValue("execute", "query-status"))

	g.Expect(q.SystemPowerdown(ctx)).To(Succeed())
	g.Expect(<-got).To(Equal(map[string]any{"execute": "system_powerdown"}))

	err = q.Execute(ctx, "bogus", map[string]any{"x": 1}, nil)
	var qe *QMPError
	g.Expect(err).To(BeAssignableToTypeOf(qe))
	g.Expect(err).To(MatchError(ContainSubstring("CommandNotFound")))
	g.Expect(<-got).To(Equal(map[string]any{"execute": "bogus", "arguments": map[string]any{"x": float64(1)}}))

	g.Expect(q.Quit(ctx)).To(Succeed(), "a connection closed in answer to quit is success")
	g.Expect(q.Close()).To(Succeed())
}

func TestQMPHonoursTheContext(t *testing.T) {
	g := NewWithT(t)
	dir, err := os.MkdirTemp("", "qmp")
	g.Expect(err).NotTo(HaveOccurred())
	defer func() { _ = os.RemoveAll(dir) }()
	// A server that accepts and never greets.
	ln, err := net.Listen("unix", filepath.Join(dir, "s"))
	g.Expect(err).NotTo(HaveOccurred())
	defer func() { _ = ln.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = DialQMP(ctx, filepath.Join(dir, "s"))
	g.Expect(err).To(MatchError(ContainSubstring("no greeting")))
	g.Expect(time.Since(start)).To(BeNumerically("<", 2*time.Second))
}

// TestDialNetOnAnAdoptedVM adopts a stand-in monitor (a sleep) from its
// process record, as a restarted node agent does: with a NIC recorded,
// DialNet waits for the socket at its conventional path; without one
// (a record from before NICs existed, or a VM started without), it fails
// with ErrNoNetwork at once.
func TestDialNetOnAnAdoptedVM(t *testing.T) {
	g := NewWithT(t)
	sleep := exec.Command("sleep", "30")
	g.Expect(sleep.Start()).To(Succeed())
	t.Cleanup(func() { _ = sleep.Process.Kill(); _ = sleep.Wait() })
	st, err := ProcessStartTime("/proc", sleep.Process.Pid)
	g.Expect(err).NotTo(HaveOccurred())
	// Short: unix socket paths are limited to 107 bytes.
	runDir, err := os.MkdirTemp("", "vm")
	g.Expect(err).NotTo(HaveOccurred())
	t.Cleanup(func() { _ = os.RemoveAll(runDir) })
	p := PathsIn(runDir)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	g.Expect(os.WriteFile(p.Process, []byte(fmt.Sprintf(`{"pid":%d,"startTime":%d}`, sleep.Process.Pid, st)), 0o600)).To(Succeed())
	vm, err := QEMU{}.Adopt(runDir)
	g.Expect(err).NotTo(HaveOccurred())
	_, err = vm.DialNet(ctx)
	g.Expect(err).To(MatchError(ErrNoNetwork), "a record without a NIC")

	g.Expect(WriteProcess(p.Process, Process{PID: sleep.Process.Pid, StartTime: st, Network: &NetworkDevice{MAC: "52:54:00:12:34:56"}})).To(Succeed())
	vm, err = QEMU{}.Adopt(runDir)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(vm.Process().Network).To(Equal(&NetworkDevice{MAC: "52:54:00:12:34:56"}))
	dialed := make(chan error, 1)
	go func() {
		c, err := vm.DialNet(ctx)
		if err == nil {
			_, err = c.Write([]byte("frame"))
			_ = c.Close()
		}
		dialed <- err
	}()
	// QEMU creates the socket a moment later: DialNet retries meanwhile.
	time.Sleep(50 * time.Millisecond)
	ln, err := net.Listen("unix", p.Net)
	g.Expect(err).NotTo(HaveOccurred())
	defer func() { _ = ln.Close() }()
	c, err := ln.Accept()
	g.Expect(err).NotTo(HaveOccurred())
	b, err := io.ReadAll(c)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(string(b)).To(Equal("frame"))
	g.Expect(<-dialed).To(Succeed())

	short, cancelShort := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancelShort()
	g.Expect(os.Remove(p.Net)).To(Succeed())
	_, err = vm.DialNet(short)
	g.Expect(err).To(MatchError(And(ContainSubstring("network socket"), ContainSubstring("deadline exceeded"))))
}
