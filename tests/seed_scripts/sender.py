import pipebit

# Defines SafeSender that creates a Pipeline with name 'data_pipe' with Debugging Information to Console
ss = pipebit.SafeSender("data_pipe",1)

# Iterates from 0 to 49 and sends the values from i, i + 1 ... i + 4 (size of 5)
for i in range(50):
    ss.send([i,i+1,i+2,i+3,i+4])

print("Finished! All Packets have been safely sent. Waiting for Packet Queue Dispatcher to Finish...")
