# The unique constraint on (species, energy_scaled, J_scaled) serves every lookup by
# (species, energy_scaled): a second index on those columns only cost time at each new level.

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('node_atom', '0003_hyperfine_constants'),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name='state',
            name='states_species_energy_idx',
        ),
    ]
