# The "simple example" of the SpiNNaker guide to the EBRAINS portal (the seed document shows
# its first lines; the rest is the guide's well-known script): one IF_curr_exp neuron driven
# by one spike, its membrane potential and spikes plotted to simple_example.png.

import matplotlib.pyplot as plt
import pyNN.utility.plotting as plot
import spynnaker8 as sim

sim.setup(timestep=1.0)
sim.set_number_of_neurons_per_core(sim.IF_curr_exp, 100)

pop_1 = sim.Population(1, sim.IF_curr_exp(), label="pop_1")
input = sim.Population(1, sim.SpikeSourceArray(spike_times=[0]), label="input")
input_proj = sim.Projection(
    input, pop_1, sim.OneToOneConnector(), synapse_type=sim.StaticSynapse(weight=5, delay=1)
)
pop_1.record(["spikes", "v"])
simtime = 10
sim.run(simtime)
neo = pop_1.get_data(variables=["spikes", "v"])
spikes = neo.segments[0].spiketrains
print(spikes)
v = neo.segments[0].filter(name="v")[0]
print(v)
sim.end()

plot.Figure(
    plot.Panel(
        v,
        ylabel="Membrane potential (mV)",
        data_labels=[pop_1.label],
        yticks=True,
        xlim=(0, simtime),
    ),
    plot.Panel(spikes, yticks=True, markersize=5, xlim=(0, simtime)),
    title="Simple Example",
    annotations=f"Simulated with {sim.name()}",
)
plt.savefig("simple_example.png")
