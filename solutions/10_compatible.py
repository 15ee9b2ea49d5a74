# Notebook 10, exercise 2 (apply): the destination check for a guest that uses PEBS.
# check: ex10_compatible
def compatible(guest, dest):
    """Return the set of reasons ``dest`` cannot take ``guest`` (codes of nb10.CODES)."""
    codes = set()
    if dest["pebs_format"] != guest["pebs_format"]:
        codes.add("format")            # the guest sized its records for the old format
    if guest["nr_gp"] > dest["n_gp"]:
        codes.add("gp_counters")
    if guest["nr_fixed"] > dest["n_fixed"]:
        codes.add("fixed_counters")
    if guest["width"] > dest["width"]:
        codes.add("width")
    for i in range(guest["nr_gp"]):
        if guest["pebs_enable"] >> i & 1 and not dest["pebs_counter_mask"] >> i & 1:
            codes.add("pebs_counter")
    return codes
