# check: ex01_preset
def preset(period, width):
    """Return the value to write to a width-bit counter so it overflows after `period` events.

    The counter counts up and overflows when it wraps from 2**width - 1 to 0,
    so start it `period` events below the wrap: 2**width - period, which is
    -period kept to its low `width` bits.
    """
    return (-period) & ((1 << width) - 1)
