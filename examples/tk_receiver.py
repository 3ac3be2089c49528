"""A Tkinter window that shows the packets of "data_pipe" as they arrive.

    python examples/tk_receiver.py           # then, in another terminal:
    python examples/tk_button.py             # each click sends a packet here

A GUI's thread must never block, so the window does not wait in receive():
every 50 ms, Tk's own timer (``after``) calls ``receive(timeout=0)``, which
returns at once with whatever arrived meanwhile -- often nothing.  The receiver's
background thread keeps reading the pipe in between, so no sender waits on the
window.  (For a Fast pipe, the same loop shows the newest value only.)

``--count N`` closes the window after N packets and prints what it showed.
"""

import argparse
import tkinter as tk

import pipebit

POLL_MS = 50

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--count", type=int, default=0, help="close after this many packets (0: never)")
args = parser.parse_args()

receiver = pipebit.SafeReceiver("data_pipe", start="new")
shown = 0

root = tk.Tk()
root.title("PipeBit receiver")
label = tk.Label(root, text="waiting for packets...", width=40)
label.pack(padx=20, pady=20)


def poll() -> None:
    global shown
    for packet in receiver.receive(timeout=0):  # never blocks the window
        shown += 1
        label.config(text=f"{shown}: {packet}")
        print(f"shown {packet}", flush=True)
        if shown == args.count:
            root.destroy()
            return
    root.after(POLL_MS, poll)


root.after(0, poll)
print("ready", flush=True)
root.mainloop()
receiver.close_connection()
