"""The harness: timing, checking and reporting for every moebench benchmark."""

if __name__ == "bench":  # imported bare, from the checkout root: step aside
    import moebench

    moebench.step_aside(__name__)
