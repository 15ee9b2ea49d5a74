"""What the VMM (QEMU) does on top of KVM: save, restore and migrate a VM."""
