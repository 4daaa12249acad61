"""The harness: timing, checking and reporting for every moebench benchmark."""
