# `db`: PostgreSQL for the guests that own databases; never reachable from `proxy`. Its
# service module comes from the inventory's `services`; settings of this guest go here.
{ }
