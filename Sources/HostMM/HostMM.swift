// HostMM: the kernel memory-manager model.
