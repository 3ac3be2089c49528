import pipebit

# Defines SafeReceiver that connects with the Pipeline named 'data_pipe' with No Debugging Information to Console
sr = pipebit.SafeReceiver("data_pipe",0)

# Infinite Loop that listens for incoming data from the pipeline and prints it out to the console excepting an empty data value
while(True):
    data = sr.receive()
    if(len(data)):
        print(data)
