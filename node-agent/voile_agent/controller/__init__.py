"""Watch loops and the reconcile loop: observe -> plan -> apply, on events and on a timer."""
