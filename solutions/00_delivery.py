# Notebook 00, exercise 1 (warm-up): how long a PEBS record waits in guest memory.
# check: ex00_delivery
def delivery_delay(rows):
    """Return the cycles from the first PEBS_WRITE to the first DRAIN after it, or None."""
    for k, row in enumerate(rows):
        if row["kind"] == "PEBS_WRITE":
            for later in rows[k:]:
                if later["kind"] == "DRAIN":
                    return later["time"] - row["time"]
            return None
    return None
