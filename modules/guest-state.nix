# A guest's persistent state from the plan: every Homestack guest needs it, on either
# engine, because its SSH host key lives there.
guest:
if guest.state != null then
  guest.state
else
  throw "guests.${guest.name}: a Homestack guest needs persistent state (its SSH host key lives there); set state_size in inventory.toml"
