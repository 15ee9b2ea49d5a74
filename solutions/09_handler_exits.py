# Notebook 09, exercise 2 (apply): the VM exits of one guest PMI handler.
# check: ex09_handler_exits
def handler_exits(linux):
    """The (op, msr) of every MSR access of the guest's PMI handler, in order.

    intel_pmu_handle_irq(): disable (GLOBAL_CTRL = 0), read GLOBAL_STATUS,
    acknowledge it (GLOBAL_OVF_CTRL), handle it (the PEBS drain reads guest
    memory: no exit), read GLOBAL_STATUS again (now 0), enable (GLOBAL_CTRL).
    A 3.15 guest's disable/enable also write PEBS_ENABLE = 0 after
    GLOBAL_CTRL = 0, and PEBS_ENABLE back before GLOBAL_CTRL (FACTS g.2);
    without auto-reload its drain re-arms PMC0: read it, write -period.
    """
    GLOBAL_CTRL, STATUS, OVF_CTRL, PEBS_ENABLE, PMC0 = 0x38F, 0x38E, 0x390, 0x3F1, 0xC1
    if linux == "3.15":
        return [("wr", GLOBAL_CTRL), ("wr", PEBS_ENABLE), ("rd", STATUS), ("wr", OVF_CTRL),
                ("rd", PMC0), ("wr", PMC0), ("rd", STATUS), ("wr", PEBS_ENABLE),
                ("wr", GLOBAL_CTRL)]
    return [("wr", GLOBAL_CTRL), ("rd", STATUS), ("wr", OVF_CTRL), ("rd", STATUS),
            ("wr", GLOBAL_CTRL)]
