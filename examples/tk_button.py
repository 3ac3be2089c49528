"""A window with one button; every click sends a packet into "data_pipe".

Watch the clicks arrive with:  python examples/receiver.py
send() returns at once, so the interface never waits for the pipe.
"""

import tkinter as tk

import pipebit

sender = pipebit.SafeSender("data_pipe", 0)
clicks = 0


def on_click() -> None:
    global clicks
    clicks += 1
    sender.send(["click", clicks])
    label.config(text=f"{clicks} click(s) sent")


root = tk.Tk()
root.title("PipeBit button")
tk.Button(root, text="Send a packet", command=on_click, width=24).pack(padx=20, pady=(20, 8))
label = tk.Label(root, text="no clicks yet")
label.pack(padx=20, pady=(0, 20))
root.mainloop()
