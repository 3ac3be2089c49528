from tkinter import *
import pipebit

# Define iterator starting at 1
i = 1

# Sends the Data to the Pipeline everytime the Button is pressed
def pressed_button(event):
    global i
    ss.send(["Pressed the button {0} times!".format(i)])
    i += 1  

# Create Button
widget = Button(None, text = "Send Data")
widget.pack()
widget.bind('<Button-1>', pressed_button)

# Create Clicks Pipeline
ss = pipebit.SafeSender("data_pipe",0)

# Tkinter Mainloop
widget.mainloop()
