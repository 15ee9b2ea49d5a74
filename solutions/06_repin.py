# Solution to exercise 1 of notebook 06 (the re-pin rule).
# check: ex06_repin


def pinned_area(steps):
    """Which DS area ("A", "B" or None) the patch's KVM holds pinned after the steps."""
    ds_area, pebs_enable, pinned = 0, 0, None       # KVM's copies and what is pinned
    for what, value in steps:
        if what == "DS_AREA":
            ds_area = value                       # only stored: no pin, no unpin
        elif what == "PEBS_ENABLE":
            if value and value != pebs_enable:    # release, then pin what DS_AREA says now
                pinned = ds_area or None          # DS_AREA 0 cannot be translated: no pins
            elif value == 0 and pebs_enable:
                pinned = None
            pebs_enable = value
        # "RESET": kvm_pmu_reset leaves pebs_enable, ds_area and the pins as they are
    return pinned
