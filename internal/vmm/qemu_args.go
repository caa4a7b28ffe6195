package vmm

import (
	"strconv"
	"strings"
)

// baseKernelArgs are always on the kernel command line. The cloud kernel
// finds microvm's virtio-mmio devices through ACPI (it lacks
// VIRTIO_MMIO_CMDLINE_DEVICES), so ACPI stays on; the rest skip probing for
// hardware microvm does not have, which is most of the boot time under TCG.
var baseKernelArgs = []string{
	"console=ttyS0", "quiet", "panic=-1",
	"pci=off", "i8042.noaux", "i8042.nomux", "i8042.nopnp", "i8042.dumbkbd",
	"8250.nr_uarts=1", "cryptomgr.notests", "random.trust_cpu=on",
}

// KernelCmdline is the command line QEMU passes to the guest for cfg.
func KernelCmdline(cfg Config) string {
	cfg = cfg.withDefaults()
	args := append([]string{}, baseKernelArgs...)
	args = append(args, "agent.port="+cfg.AgentPort)
	if cfg.Accel == AccelTCG {
		args = append(args, "tsc_early_khz="+strconv.Itoa(cfg.TSCkHz))
	}
	args = append(args, cfg.KernelArgs...)
	return strings.Join(args, " ")
}

// QEMUArgs is the argument vector (without argv[0]) of
// qemu-system-x86_64 for cfg on the microvm machine.
func QEMUArgs(cfg Config) []string {
	cfg = cfg.withDefaults()
	p := PathsIn(cfg.RunDir)
	args := []string{
		"-M", "microvm,x-option-roms=off,isa-serial=on,rtc=on",
	}
	switch cfg.Accel {
	case AccelTCG:
		args = append(args, "-accel", "tcg,thread=multi", "-cpu", "max")
	default:
		args = append(args, "-accel", "kvm", "-cpu", "host")
	}
	args = append(args,
		"-m", strconv.Itoa(cfg.MemoryMiB), "-smp", strconv.Itoa(cfg.CPUs),
		// No default devices, no monitor on stdio; the console goes to a file.
		"-nodefaults", "-no-user-config", "-nographic",
		// A guest reboot ends QEMU: the node agent decides about restarts.
		"-no-reboot",
		"-serial", "file:"+optEscape(p.Console),
		"-qmp", "unix:"+optEscape(p.QMP)+",server=on,wait=off",
		"-kernel", cfg.Kernel,
		"-initrd", cfg.Initrd,
		// QEMU is the server of the agent socket, so that a restarted node
		// agent can connect again. Nothing is lost before the first
		// connection: the guest's writes block while no host is connected.
		"-chardev", "socket,id=agent,path="+optEscape(p.Agent)+",server=on,wait=off",
		"-device", "virtio-serial-device",
		"-device", "virtserialport,chardev=agent,name="+cfg.AgentPort,
		// virtio-mmio v2 (legacy is QEMU's default); vhost-user devices such
		// as virtio-fs refuse legacy ones.
		"-global", "virtio-mmio.force-legacy=false",
	)
	if cfg.RootDisk != "" {
		args = append(args,
			"-drive", "id=root,file="+optEscape(cfg.RootDisk)+",format=raw,if=none,readonly=on",
			"-device", "virtio-blk-device,drive=root,serial="+RootDiskSerial)
	}
	for i, d := range cfg.Disks {
		id := "d" + strconv.Itoa(i)
		drive := "id=" + id + ",file=" + optEscape(d.Path) + ",format=raw,if=none"
		if d.ReadOnly {
			drive += ",readonly=on"
		}
		args = append(args, "-drive", drive, "-device", "virtio-blk-device,drive="+id+",serial="+d.Serial)
	}
	if cfg.Network != nil {
		// server=on: QEMU listens (see NetworkDevice). 7.2 does not wait
		// for a client before starting the guest.
		args = append(args,
			"-netdev", "stream,id=net0,server=on,addr.type=unix,addr.path="+optEscape(p.Net),
			"-device", "virtio-net-device,netdev=net0,mac="+cfg.Network.MAC)
	}
	return append(args, "-append", KernelCmdline(cfg))
}

// optEscape escapes a value inside a QEMU option list, where ',' separates
// options and ',,' is a literal comma.
func optEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }
