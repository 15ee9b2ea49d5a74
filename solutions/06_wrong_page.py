# Solution to exercise 3 of notebook 06 (a layout that makes the patch miss a page).
# check: ex06_wrong_page


def wrong_page_layout():
    """An unaligned buffer small enough that the 17-page cap plays no part.

    The loop steps from buffer_base by 4096 while addr < absolute_maximum; with
    the base 2048 bytes into its page, the buffer's last 2048-odd bytes lie in a
    page one past the last step. 8 pages + 1 DS page: 9 pins, far from 17.
    """
    return dict(ds_offset=0, buf_offset=2048, buf_pages=8)
